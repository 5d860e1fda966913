"""``train.compile`` for real: every method's step through ``torch.compile``.

The ``aot_eager`` backend (dynamo's graph capture and AOTAutograd's forward and
backward graphs, run by ATen's eager kernels: no C++ compiler needed) on the CPU. A
counting backend sees every graph dynamo hands over: a graph break or a recompilation
is one graph more, so one graph for a whole run of two epochs means neither happened,
while the temperature schedule, the learning rate, SwAV's queue, SDCLR's masks and
stage 2's weights moved. The compiled run must end where the eager run ends, within
float tolerance. Then the fallback: a compiled forward or backward whose compilation
fails in the first step says so in one line and the run goes on eagerly, exactly as an
eager run; any other error (an out-of-memory, the model's own) reaches the caller
unchanged, and after the first step nothing is cloned and nothing caught.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch._dynamo as dynamo
from torch import nn
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.backends.debugging import aot_eager
from torch._inductor.exc import InductorError

from fassl.methods import METHODS, build_method
from fassl.runtime import Runtime
from fassl.train.compile import CompiledForward
from fassl.train.loop import Trainer
from tests.helpers import tiny_config, tiny_data

# Not `trains`: aot_eager runs the eager tests' own ATen kernels, which `make test`
# already runs again on the AVX2 kernels.
QUEUE = ("swav.queue_length=12", "swav.queue_start_epoch=0")  # in use and filling
CASES = [
    *[(name, QUEUE if name == "swav" else ()) for name in METHODS],
    ("simclr", ("temperature.schedule=cosine", "temperature.period_epochs=2")),
    ("sdclr", ("temperature.schedule=cosine", "temperature.rule=step")),
    ("byol", ("byol.ema_schedule=cosine", "optim.optimizer=lars")),
]


class CountingBackend:
    """``aot_eager``, counting the graphs it is given."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
        self.graphs += 1
        return aot_eager(gm, example_inputs)


def trainer(tmp_path: Path, name: str, overrides: tuple[str, ...], backend=None) -> Trainer:
    """A run of ``name`` (two epochs of three steps); compiled with ``backend`` when one
    is given."""
    cfg = tiny_config(tmp_path, *overrides, "train.checkpoint_every_s=1000")
    init = None
    if name == "fassl_rebalance":
        torch.manual_seed(0)
        init = build_method(tiny_config(tmp_path / "stage1"), "fassl_prototypes").export_state()
    torch.manual_seed(cfg.seed)
    data = tiny_data(counts=(12, 6, 6))  # three steps an epoch
    t = Trainer(build_method(cfg, name, init), data, cfg, cfg.optim, tmp_path, Runtime.cpu(), "s")
    if backend is not None:
        t.forward = CompiledForward(t.model, True, backend=backend)
    return t


@pytest.fixture(autouse=True)
def fresh_dynamo():
    dynamo.reset()
    dynamo.utils.counters.clear()
    yield
    dynamo.reset()


def _case_id(name: str, overrides: tuple[str, ...]) -> str:
    return "-".join([name, *(o.split("=")[1] for o in overrides)])


@pytest.mark.slow  # a few seconds a method: 40-60 s for all of them on 2 cores
@pytest.mark.parametrize(
    ("name", "overrides"), [pytest.param(n, o, id=_case_id(n, o)) for n, o in CASES]
)
def test_a_compiled_run_is_one_graph_and_ends_where_the_eager_run_ends(
    tmp_path: Path, name: str, overrides: tuple[str, ...]
) -> None:
    eager = trainer(tmp_path / "eager", name, overrides)
    eager.fit()
    backend = CountingBackend()
    compiled = trainer(tmp_path / "compiled", name, overrides, backend)
    compiled.fit()
    assert compiled.forward.active  # nothing fell back
    breaks = dict(dynamo.utils.counters["graph_break"])
    assert not breaks, breaks
    # GH's loss starts after its warm-up: one graph before it, one after (no other change)
    graphs = 2 if name.endswith("_gh") else 1
    assert backend.graphs == graphs, f"{backend.graphs} graphs: recompiled ({name}, {overrides})"
    assert compiled.global_step == eager.global_step == 6
    expected = eager.method.state_dict()
    for key, value in compiled.method.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-4, atol=1e-5, msg=key)


def _failing_compiler(what: str) -> Callable:
    """A backend that fails compiling (dynamo wraps it in BackendCompilerFailed)."""

    def compiler(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
        raise RuntimeError(f"{what} exploded")

    return compiler


def _failing_backward_compiler(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
    """AOTAutograd compiles the backward at its first call and raises what the compiler
    raised, unwrapped: inductor's own error, as inductor would."""
    raise InductorError(RuntimeError("backward exploded"), None)


def _raising_at_run(error: BaseException) -> Callable:
    """A compiler that succeeds; the compiled graph raises ``error`` when it runs."""

    def compiler(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
        def run(*args: Any) -> Any:  # boxed (one list) or not: never gets that far
            raise error

        run._boxed_call = True  # type: ignore[attr-defined]
        return run

    return compiler


def _nop(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
    def run(args: list[Any]) -> Any:
        return gm(*args)

    run._boxed_call = True  # type: ignore[attr-defined]
    return run


# the compiled forward runs, then its backward fails compiling: after SwAV's queue and
# the BatchNorm statistics took the batch, which the redone eager step must not see twice
FAILING = {
    "backward": aot_autograd(fw_compiler=_nop, bw_compiler=_failing_backward_compiler),
    "forward": _failing_compiler("forward"),
}


def compile_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("train.compile:")]


@pytest.mark.parametrize("where", list(FAILING))
@pytest.mark.parametrize("name", ["simclr", "swav"])
@pytest.mark.slow
def test_a_compile_error_in_the_first_step_prints_one_line_and_trains_like_eager(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, where: str
) -> None:
    overrides = QUEUE if name == "swav" else ()
    eager = trainer(tmp_path / "eager", name, overrides)
    eager.fit()
    t = trainer(tmp_path / "compiled", name, overrides, FAILING[where])
    assert t.forward.active
    capsys.readouterr()
    t.fit()
    lines = compile_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert "compilation turned off" in lines[0] and f"{where} exploded" in lines[0]
    assert not t.forward.active
    expected = eager.method.state_dict()
    for key, value in t.method.state_dict().items():
        assert torch.equal(value, expected[key]), key


class Small(nn.Module):
    """A linear layer and BatchNorm (state a step changes); raises ``error`` if given."""

    def __init__(self, error: BaseException | None = None) -> None:
        super().__init__()
        self.linear, self.norm, self.error = nn.Linear(3, 4), nn.BatchNorm1d(4), error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.error is not None:
            raise self.error
        return self.norm(self.linear(x)).square().mean()


def step(forward: CompiledForward, x: torch.Tensor) -> bool:
    return forward.backward(forward(x))


ERRORS = {  # none of them the compiler's: each must reach the caller as it was raised
    "model_runtime_error": (RuntimeError("shapes do not match"), "model", "forward"),
    "oom_forward": (torch.OutOfMemoryError("CUDA out of memory"), "graph", "forward"),
    "memory_error_forward": (MemoryError("no memory"), "graph", "forward"),
    "oom_backward": (torch.OutOfMemoryError("CUDA out of memory"), "graph", "backward"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_an_error_that_is_not_the_compilers_propagates_unchanged(
    capsys: pytest.CaptureFixture[str], case: str
) -> None:
    error, source, where = ERRORS[case]
    if source == "model":
        model, backend = Small(error), "aot_eager"
    elif where == "forward":
        model, backend = Small(), _raising_at_run(error)
    else:
        backend = aot_autograd(fw_compiler=_nop, bw_compiler=_raising_at_run(error))
        model = Small()
    forward = CompiledForward(model, True, backend=backend)
    with pytest.raises(type(error)) as raised:
        step(forward, torch.randn(8, 3))
    assert raised.value is error
    assert forward.active  # not taken for a compile failure
    assert compile_lines(capsys.readouterr().err) == []


def test_after_the_first_step_nothing_is_cloned_and_nothing_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class SecondCompileFails:
        def __init__(self) -> None:
            self.graphs = 0

        def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
            self.graphs += 1
            if self.graphs > 1:
                raise RuntimeError("recompilation exploded")
            return aot_eager(gm, example_inputs)

    model = Small()
    forward = CompiledForward(model, True, backend=SecondCompileFails())
    clones = 0
    state_dict = model.state_dict

    def counted_state_dict(*args: Any, **kwargs: Any) -> Any:
        nonlocal clones
        clones += 1
        return state_dict(*args, **kwargs)

    monkeypatch.setattr(model, "state_dict", counted_state_dict)
    assert step(forward, torch.randn(8, 3))
    assert clones == 1  # the first step's state, once
    for _ in range(3):
        assert step(forward, torch.randn(8, 3))
    assert clones == 1
    # a recompilation (another batch size) that fails is an error: no fallback any more
    with pytest.raises(dynamo.exc.BackendCompilerFailed, match="recompilation exploded"):
        step(forward, torch.randn(5, 3))
    assert forward.active and clones == 1
