"""``train.compile``: the method's forward through ``torch.compile``, eager as a fallback.

Compilation pays on CUDA (fewer kernel launches, fused element-wise work in the
backbone and the losses); on the CPU it is off unless asked for (``fassl bench``
measures both). Every method's forward traces as one graph (no graph break, and no
recompilation as schedules move: a scheduled temperature is a 0-d buffer, SwAV's queue
keeps its shape; ``tests/test_compile.py``). A failing compilation must never stop a
run: the first exception from the compiled path, in the forward or in its backward, is
reported once as a warning and the run goes on eagerly.
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

    A forward that fails compiling raises before it changes anything (dynamo applies a
    frame's side effects only once it is compiled), so the same call runs eagerly. A
    compiled backward fails after its forward ran, so ``backward`` reports it and the
    caller redoes the step eagerly. In the first compiled step (where both compile) the
    model's state is first put back as the step found it (BatchNorm statistics, SwAV's
    queue, BCL's losses), so the redone step is exactly the eager one; a failure in a
    later step (a recompilation) redoes the step over what its forward already updated.
    """

    def __init__(
        self, model: nn.Module, enabled: bool, backend: str | Callable[..., Any] | None = None
    ) -> None:
        self.model = model
        self.compiled: Callable[..., Any] | None = None
        self._start_state: dict[str, torch.Tensor] | None = None
        self._proven = False  # a compiled forward and backward have both run
        if enabled:
            try:
                # backend None: torch.compile's own (inductor); tests pass aot_eager
                kwargs = {} if backend is None else {"backend": backend}
                self.compiled = torch.compile(model, **kwargs)
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
        if not self._proven and self._start_state is None:  # once: what to restore
            self._start_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        try:
            return self.compiled(*args)
        except Exception as err:  # compilation happens on the first call(s)
            self._fall_back(err)
            self._restore()
            return self.model(*args)

    def backward(self, loss: torch.Tensor) -> bool:
        """``loss.backward()``: True when it ran. False when the compiled backward failed:
        warned once, compilation off, the state of the first compiled step restored if
        the failure came there; the caller then redoes the step (zeroed gradients,
        forward, backward), now eagerly."""
        if self.compiled is None:
            loss.backward()
            return True
        try:
            loss.backward()
        except Exception as err:
            self._fall_back(err)
            self._restore()
            return False
        self._proven, self._start_state = True, None
        return True

    @torch.no_grad()
    def _restore(self) -> None:
        """The model's state as the first compiled step found it, if it is still held."""
        if self._start_state is None:
            return
        for key, value in self.model.state_dict().items():
            value.copy_(self._start_state[key])
        self._start_state = None
