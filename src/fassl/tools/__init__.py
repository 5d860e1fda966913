"""Per-image answers for any collection: embeddings, a rarity ranking, exports, t-SNE."""


class ToolError(ValueError):
    """Input a tool cannot work with (a weight without prototypes, an unknown class...)."""
