"""Loading weights with errors that say which file and which keys do not fit."""

from __future__ import annotations

import torch
from torch import nn

from fassl.errors import IncompatibleCheckpoint


def load_state_checked(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module`` exactly, or raise naming ``source`` and the misfits."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (checkpoint vs model), e.g. {wrong[:3]}")
        if missing:
            parts.append(f"{len(missing)} keys missing, e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:3]}")
        raise IncompatibleCheckpoint(
            f"{source} does not fit this model (another architecture, width or method?): "
            + "; ".join(parts)
        )
    module.load_state_dict(state)


def sub_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix.`` with the prefix removed."""
    p = prefix + "."
    return {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}
