"""Per-image answers for any collection: embeddings, a rarity ranking, exports, t-SNE."""

from fassl.errors import FasslError


class ToolError(FasslError, ValueError):
    """Input a tool cannot work with (a weight without prototypes, an unknown class...);
    the command line prints it as one line and exits with status 2, like every FasslError."""
