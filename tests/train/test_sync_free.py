"""A training step never waits for the device: one step of every method, counted.

Each method's ``Trainer.train_step`` runs on the ``meta`` device, whose tensors have a
shape but no data: reading a value (``.item()``, ``int(t)``, ``bool(t)``, a boolean
mask) is impossible there, so it either raises or is counted. Two modes watch the step:

- a ``TorchDispatchMode`` counts copies between the host and the device
  (``aten._to_copy`` / ``aten.copy_`` with one end on the CPU and the other not),
  scalar reads (``aten._local_scalar_dense``, ``aten.item``, ``aten.is_nonzero``) and
  tensors made from a Python number on the device (``aten.scalar_tensor``,
  ``aten.lift_fresh``). Autograd's own backward formulas make scalar tensors on the
  device (a fill, no copy); those, inside ``loss.backward()``'s graph task, are
  PyTorch's and not counted;
- a ``TorchFunctionMode`` counts ``torch.tensor`` / ``torch.as_tensor`` /
  ``Tensor.new_tensor`` of Python data onto the device: that constructor copies the
  data inside the C++ binding, where no dispatch mode sees it.

The SDCLR probe's steps are held to the same rule, and SwAV's masked queue is checked
against the codes of its filled rows.

The step before the counted one runs uncounted: constants are made once per device
there. Everything else a step does must be queued on the device without a look back.
The methods' epoch starts may read the device (SDCLR's threshold, BCL's statistics over
the data set): they run before the steps, uncounted. Two cannot run on ``meta``: BCL's
(a boolean mask over its momentum losses) is skipped, which changes nothing before the
first epoch (no image seen yet: every strength is 0, as ``attach_data`` made it); the
cluster-size weight's image count per prototype (``bincount``, no meta kernel) is
replaced by zeros of its shape, dtype and device.
"""

from __future__ import annotations

import collections
import contextlib
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from fassl.eval import probe
from fassl.losses import sinkhorn
from fassl.methods import METHODS, EpochContext, build_method
from fassl.methods.bcl import BoostedMemorization
from fassl.rebalance import reweighters
from fassl.runtime import Runtime
from fassl.train.loop import Trainer
from tests.helpers import tiny_config, tiny_data

aten = torch.ops.aten
META = torch.device("meta")
SCALAR_READS = {aten._local_scalar_dense, aten.item, aten.is_nonzero}
COPIES = {aten._to_copy, aten.copy_}
SCALAR_TENSORS = {aten.scalar_tensor, aten.lift_fresh, aten.lift_fresh_copy}
CONSTRUCTORS = {torch.tensor, torch.as_tensor, torch.Tensor.new_tensor}


def _where() -> str:
    """The innermost frame of the package: what to fix."""
    frames = [f for f in traceback.extract_stack() if "/fassl/" in f.filename]
    if not frames:
        return "?"
    f = frames[-1]
    return f"{f.filename.rpartition('/fassl/')[2]}:{f.lineno}"


def _on_host(device: object) -> bool:
    return device is None or torch.device(device).type == "cpu"  # type: ignore[arg-type]


class _Dispatch(TorchDispatchMode):
    def __init__(self, found: collections.Counter[str]) -> None:
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in SCALAR_READS:
            self.found[f"scalar read {func} at {_where()}"] += 1
        elif packet in COPIES:
            src = args[1] if packet is aten.copy_ else args[0]
            dst = args[0].device if packet is aten.copy_ else kwargs.get("device", src.device)
            if _on_host(src.device) != _on_host(dst):
                kind = "host->device" if _on_host(src.device) else "device->host"
                self.found[f"{kind} copy {func} at {_where()}"] += 1
        elif packet in SCALAR_TENSORS and torch._C._current_graph_task_id() < 0:
            device = kwargs.get("device") if packet is aten.scalar_tensor else args[0].device
            if not _on_host(device):
                self.found[f"scalar tensor {func} on {device} at {_where()}"] += 1
        return func(*args, **kwargs)


class _Function(TorchFunctionMode):
    def __init__(self, found: collections.Counter[str]) -> None:
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func in CONSTRUCTORS:
            device = kwargs.get("device")
            if func is torch.Tensor.new_tensor and device is None:
                device = args[0].device
            if not _on_host(device):
                self.found[f"host->device {func.__name__} at {_where()}"] += 1
        return func(*args, **kwargs)


@contextmanager
def counting() -> Iterator[collections.Counter[str]]:
    """What the block waits for the device for: a description -> how often."""
    found: collections.Counter[str] = collections.Counter()
    with _Function(found), _Dispatch(found):
        yield found


# ------------------------------------------------------------------- the counter itself


def test_the_counter_sees_every_kind_of_wait() -> None:
    x = torch.zeros(4, device=META)
    cases = [
        ("host->device tensor", lambda: torch.tensor([0.299, 0.587], device=META)),
        ("host->device new_tensor", lambda: x.new_tensor([1.0])),
        ("host->device copy", lambda: torch.ones(3).to(META)),
        ("device->host copy", lambda: x.cpu()),
        ("scalar read", lambda: x.sum().item()),
        ("scalar read", lambda: bool(x.sum())),
        ("scalar read", lambda: int(x[0])),
        ("scalar tensor", lambda: torch.where(x > 0, x, 0.0)),
    ]
    for what, fn in cases:
        # meta refuses to produce the value; the attempt is counted first
        with counting() as found, contextlib.suppress(RuntimeError, NotImplementedError):
            fn()
        assert any(key.startswith(what) for key in found), (what, found)
    with counting() as found:  # what a step may do: queue work on the device
        y = (x * 2.0).masked_fill(x > 0, float("-inf")) + x.new_full((), 1.0)
        torch.randn(4, device=META).add_(y).clamp_(0, 1)
    assert not found, found


# --------------------------------------------------------------------- one step each


def _stage1_state(tmp_path: Path) -> dict[str, torch.Tensor]:
    cfg = tiny_config(tmp_path / "stage1")
    torch.manual_seed(0)
    return build_method(cfg, "fassl_prototypes").export_state()


# Every registered method, and the settings that take other paths through a step.
CASES = [
    *[(name, ()) for name in METHODS],
    ("simclr", ("temperature.schedule=cosine",)),
    ("swav", ("swav.queue_length=12", "swav.queue_start_epoch=0")),
    ("byol", ("byol.ema_schedule=cosine", "optim.optimizer=lars")),
    *[("fassl_rebalance", (f"rebalance.weight={w}",)) for w in reweighters.REWEIGHTERS],
]
KNOWN: dict[str, pytest.MarkDecorator] = {}


def _case_id(name: str, overrides: tuple[str, ...]) -> str:
    return "-".join([name, *(o.split("=")[1] for o in overrides)])


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        pytest.param(
            n,
            o,
            id=_case_id(n, o),
            marks=[KNOWN[_case_id(n, o)]] if _case_id(n, o) in KNOWN else [],
        )
        for n, o in CASES
    ],
)
@pytest.mark.slow
def test_a_training_step_never_waits_for_the_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, overrides: tuple[str, ...]
) -> None:
    monkeypatch.setattr(  # bincount has no meta kernel (an epoch start's, not a step's)
        reweighters,
        "occupancy",
        lambda z, p: torch.zeros(p.shape[0], dtype=torch.long, device=z.device),
    )
    cfg = tiny_config(tmp_path, *overrides)
    init = _stage1_state(tmp_path) if name == "fassl_rebalance" else None
    torch.manual_seed(0)
    method = build_method(cfg, name, init)
    trainer = Trainer(method, tiny_data(), cfg, cfg.optim, tmp_path, Runtime(META), "s")
    trainer.model.train()
    if not isinstance(method, BoostedMemorization):
        method.on_epoch_start(EpochContext(0, cfg.optim.epochs, trainer.embed))
    index = torch.arange(cfg.optim.batch_size).to(META)  # per epoch, before its steps
    trainer.train_step(index, 0)  # constants are made once per device here
    with counting() as found:
        loss, logs = trainer.train_step(index, 1)
    assert loss.device == META and all(v.device == META for v in logs.values())
    assert not found, "\n".join(f"{n} x {what}" for what, n in found.items())


# ------------------------------------------------------------- SDCLR's augmented probe


def test_the_augmented_probe_waits_once_an_epoch_not_once_a_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``linear_probe_sdclr`` on ``meta``. What it does once (features of val / test,
    the head's initial weights) and once an epoch (the validation accuracy, the epoch's
    draws) may wait; its steps may not, so 4 steps an epoch count what 1 step does. The
    reads that cannot run on ``meta`` (features and predictions to the host, accuracy)
    are replaced by zeros of their shapes."""
    dim = 8
    monkeypatch.setattr(
        probe, "extract_features", lambda net, images, *a, **k: torch.zeros(len(images), dim)
    )
    monkeypatch.setattr(probe, "_mean_class_acc", lambda *a: 0.0)
    monkeypatch.setattr(probe, "_best_result", lambda *a: None)
    data = tiny_data(counts=(8, 4, 4), size=8)
    splits = probe.ProbeSplits(data.pretrain, data.val, data.test, data.mean, data.std, 3)
    net = nn.Sequential(
        nn.Conv2d(3, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.AdaptiveAvgPool2d(1)
    ).to(META)

    def waits(batch_size: int) -> collections.Counter[str]:
        schedule = probe.SDCLRProbeSchedule(2, [1], 0.1, batch_size)
        with counting() as found:
            probe.linear_probe_sdclr(net, splits, schedule, 0, Runtime(META))
        return found

    one_step_an_epoch = waits(16)  # all 16 images in one batch
    assert one_step_an_epoch, "the counter sees the per-epoch copies"
    assert waits(4) == one_step_an_epoch


# ------------------------------------------------------------------------ SwAV's queue


@pytest.mark.parametrize("pushed", [0, 5, 15])
def test_swav_masks_the_unfilled_queue_rows_to_the_codes_of_the_filled_ones(
    tmp_path: Path, pushed: int
) -> None:
    """SwAV keeps its queue's shape (no count read on the host, no recompilation as it
    fills): Sinkhorn over the batch and the whole queue, the unfilled rows masked, gives
    the codes of the batch and the filled rows alone."""
    cfg = tiny_config(tmp_path, "swav.queue_length=12", "swav.queue_start_epoch=0")
    torch.manual_seed(0)
    m = build_method(cfg, "swav")
    m.use_queue = True
    dim = cfg.model.proj_dim
    for _ in range(pushed // 5):
        z = F.normalize(torch.randn(5, dim), dim=1)
        m.push_queue(z, z.flip(0))
    filled = min(pushed, 12)
    assert int(m.queue_filled) == filled
    scores = torch.randn(8, cfg.swav.num_prototypes)
    for view in (0, 1):
        queued = m.queue[view, :filled] @ m.prototypes.weight.detach().T
        expected = sinkhorn(torch.cat([scores, queued]), m.epsilon, m.sinkhorn_iters)[:8]
        torch.testing.assert_close(m.codes(scores, view), expected, rtol=1e-5, atol=1e-6)
