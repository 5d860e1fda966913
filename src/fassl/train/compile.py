"""``train.compile``: the method's forward through ``torch.compile``, eager as a fallback.

Compilation pays on CUDA (fewer kernel launches, fused element-wise work in the
backbone and the losses); on the CPU it is off unless asked for (``fassl bench``
measures both). A failing compilation must never stop a run: the first exception from
the compiled path is reported once as a warning and the run goes on eagerly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fassl.config import COMPILE_MODES

COMPILE_CHOICES = COMPILE_MODES


def wants_compile(setting: str, device: torch.device) -> bool:
    """``auto`` compiles on CUDA only; ``compile`` and ``eager`` force the choice."""
    if setting not in COMPILE_CHOICES:
        raise ValueError(f"train.compile must be one of {list(COMPILE_CHOICES)}, got {setting!r}")
    return setting == "compile" or (setting == "auto" and device.type == "cuda")


class CompiledForward:
    """Calls ``model(*args)`` compiled; after the first failure, eagerly for good.

    The wrapped module keeps its parameters and state-dict keys (``torch.compile`` wraps
    it, it does not copy it), so checkpoints are the same either way.
    """

    def __init__(self, model: nn.Module, enabled: bool) -> None:
        self.model = model
        self.compiled: Callable[..., Any] | None = None
        if enabled:
            try:
                self.compiled = torch.compile(model)
            except Exception as err:  # any backend error: eager is always correct
                self._fall_back(err)

    @property
    def active(self) -> bool:
        return self.compiled is not None

    def _fall_back(self, err: Exception) -> None:
        self.compiled = None
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        warnings.warn(
            f"train.compile: torch.compile failed ({type(err).__name__}: {first}); "
            "training continues without compilation",
            RuntimeWarning,
            stacklevel=3,
        )

    def __call__(self, *args: Any) -> Any:
        if self.compiled is None:
            return self.model(*args)
        try:
            return self.compiled(*args)
        except Exception as err:  # compilation happens on the first call(s)
            self._fall_back(err)
            return self.model(*args)
