"""``train.compile``: the method's forward through ``torch.compile``, eager as a fallback.

Compilation pays on CUDA (fewer kernel launches, fused element-wise work in the
backbone and the losses); on the CPU it is off unless asked for (``fassl bench``
measures both). Every method's forward traces as one graph (no graph break, and no
recompilation as schedules move: a scheduled temperature is a 0-d buffer, SwAV's queue
keeps its shape; ``tests/test_compile.py``). A compiler that fails on the first step
must not stop a run: a dynamo or inductor error there, in the forward or in its
backward, is printed as one line and the run goes on eagerly. Every other exception (an
out-of-memory, an error of the model's own code) propagates unchanged, and after the
first step the compiled module is called bare.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def wants_compile(setting: str, device: torch.device) -> bool:
    """``auto`` compiles on CUDA only; ``compile`` and ``eager`` force the choice."""
    return setting == "compile" or (setting == "auto" and device.type == "cuda")


@functools.cache
def compile_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the compiler failed", not "the step failed".

    Dynamo's (``BackendCompilerFailed``, ``Unsupported``, ``TorchRuntimeError``, inductor's
    ``InductorError``: all ``TorchDynamoException``) and inductor's own, which a lazily
    compiled backward raises unwrapped. Imported here, not at the top: importing dynamo
    takes seconds, and an eager run never needs it.
    """
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor import exc as inductor

    return (
        TorchDynamoException,
        inductor.OperatorIssue,  # lowering failures
        inductor.SubgraphLoweringException,
        inductor.InvalidCxxCompiler,
        inductor.CppCompileError,  # CUDACompileError too
        inductor.CppWrapperCodegenError,
    )


class CompiledForward:
    """Calls ``model(*args)`` compiled; eagerly for good if the first step's compilation
    fails.

    The wrapped module keeps its parameters and state-dict keys (``torch.compile`` wraps
    it, it does not copy it), so checkpoints are the same either way.

    Compilation happens in the first step: the forward's graph at its first call, the
    backward's at the first ``backward``. Only there is a compile error caught: the
    model's state is cloned once before that step (BatchNorm statistics, SwAV's queue,
    BCL's losses) and put back on a failure, so that the step redone eagerly is exactly
    the eager one. A forward that fails compiling raises before it changes anything
    (dynamo applies a frame's side effects only once it is compiled), so the same call
    runs eagerly; a backward that fails compiling does so after its forward ran, so
    ``backward`` returns False and the caller redoes the step. Once a compiled forward and
    backward have run, calls go to the compiled module directly: a later failure (a
    recompilation) is an error like any other.
    """

    def __init__(
        self, model: nn.Module, enabled: bool, backend: str | Callable[..., Any] | None = None
    ) -> None:
        self.model = model
        self.compiled: Callable[..., Any] | None = None
        self._run: Callable[..., Any] = model  # what a call runs
        self._start_state: dict[str, torch.Tensor] | None = None
        self._checking_backward = False  # the first compiled forward ran; its backward next
        if enabled:
            try:
                # backend None: torch.compile's own (inductor); tests pass aot_eager
                kwargs = {} if backend is None else {"backend": backend}
                self.compiled = torch.compile(model, **kwargs)
            except compile_errors() as err:
                self._fall_back(err, "set-up")
            else:
                self._run = functools.partial(self._first_forward, self.compiled)

    @property
    def active(self) -> bool:
        return self.compiled is not None

    def __call__(self, *args: Any) -> Any:
        return self._run(*args)

    def _first_forward(self, compiled: Callable[..., Any], *args: Any) -> Any:
        self._start_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        try:
            out = compiled(*args)
        except compile_errors() as err:
            self._fall_back(err, "forward")
            return self.model(*args)
        self._run, self._checking_backward = compiled, True
        return out

    def backward(self, loss: torch.Tensor) -> bool:
        """``loss.backward()``: True when it ran. False only when the first compiled
        backward failed compiling: one line printed, compilation off, the model's state
        put back as the first step found it; the caller then redoes the step (zeroed
        gradients, forward, backward), now eagerly."""
        if not self._checking_backward:
            loss.backward()
            return True
        try:
            loss.backward()
        except compile_errors() as err:
            self._fall_back(err, "backward")
            return False
        self._checking_backward, self._start_state = False, None
        return True

    def _fall_back(self, err: BaseException, where: str) -> None:
        """Compilation off for good, the first step's state put back, and one line why."""
        self.compiled, self._run, self._checking_backward = None, self.model, False
        if self._start_state is not None:
            with torch.no_grad():
                for key, value in self.model.state_dict().items():
                    value.copy_(self._start_state[key])
            self._start_state = None
        # BackendCompilerFailed's own first line only names the backend: say its cause's
        inner = getattr(err, "inner_exception", None)
        why = _one_line(err) if inner is None else f"{type(err).__name__}: {_one_line(inner)}"
        print(
            f"train.compile: compilation turned off, the compiled {where} failed ({why}); "
            "training goes on eagerly",
            file=sys.stderr,
            flush=True,
        )


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
