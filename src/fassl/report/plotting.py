"""The one way a figure gets matplotlib: pyplot on the file-only Agg backend."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot with the Agg backend. Imported on first use: it takes about half
    a second, which commands that draw nothing should not pay (start-up time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
