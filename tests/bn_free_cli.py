"""``python -m tests.bn_free_cli ARGS``: the ``fassl`` command with every BatchNorm an identity.

Under DDP each process normalises with the statistics of its own share of the batch: the
one thing that keeps a run split over processes from equalling one process on the same
global batch. Without BatchNorm the maths says the two must agree, which
tests/cli/test_torchrun_cli.py checks through the command itself (torchrun runs this module).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from torch import nn


class NoNorm(nn.Identity):
    """Takes BatchNorm's arguments, normalises nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()


def without_batchnorm(set_attr: Callable[[Any, str, Any], None] = setattr) -> None:
    """Make the models built from now on BatchNorm-free (``set_attr``: pytest's
    ``monkeypatch.setattr`` to undo it after a test)."""
    for name in ("BatchNorm1d", "BatchNorm2d"):
        set_attr(nn, name, NoNorm)


if __name__ == "__main__":
    without_batchnorm()
    from fassl.cli import main

    sys.exit(main())
