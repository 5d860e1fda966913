"""A checkpoint inside an epoch: a run stopped at any step resumes at that step and ends
where the uninterrupted run ends, tensor for tensor.

Each method below keeps some state its epoch start derives from the weights (SDCLR's
masks, BCL's boost strengths, stage 2's weight fitted on every image's features), which a
resume must restore rather than derive again from weights that have moved since.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from fassl.errors import Interrupted
from fassl.methods import build_method
from fassl.names import LAST
from fassl.runtime import Runtime
from fassl.train.checkpoint import load_checkpoint
from fassl.train.loop import Trainer
from tests.helpers import tiny_config, tiny_data

pytestmark = pytest.mark.trains

CPU = Runtime.cpu()
STEPS = 5  # 42 images, batch 8: steps per epoch
OVERRIDES = ("optim.epochs=3", "train.checkpoint_every_s=0", "train.log_every=2")


def make_trainer(cfg, name: str, seed: int = 0) -> Trainer:
    torch.manual_seed(seed)
    init = None
    if name == "fassl_rebalance":  # stage 2 starts from a stage-1 export
        init = build_method(cfg, "fassl_prototypes").export_state()
    method = build_method(cfg, name, init)
    return Trainer(method, tiny_data(), cfg, cfg.optim, cfg.out_dir, CPU, name)


def stop_at_call(trainer: Trainer, n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM arrives during the n-th forward (as a signal would: only a flag is set)."""
    method_class = type(trainer.method)
    original, calls = method_class.forward, []

    def forward(self, *args):
        calls.append(1)
        if len(calls) == n:
            trainer.stop._handle(signal.SIGTERM, None)
        return original(self, *args)

    monkeypatch.setattr(method_class, "forward", forward)


@pytest.mark.parametrize(
    ("name", "extra", "call"),
    [
        ("sdclr", (), 8),  # epoch 2, a step between two reads of the device
        ("bcl_i", (), 7),
        ("simclr_gh", (), 8),  # epoch 2 ends the warm-up: pi re-estimated every step
        ("byol", (), 12),  # epoch 3
        ("fassl_rebalance", ("rebalance.weight=knn",), 9),
    ],
)
def test_stop_inside_an_epoch_resumes_at_that_step(tmp_path, monkeypatch, name, extra, call):
    full = make_trainer(tiny_config(tmp_path / "full", *OVERRIDES, *extra), name)
    full.fit()

    cfg = tiny_config(tmp_path / "stopped", *OVERRIDES, *extra)
    first = make_trainer(cfg, name)
    stop_at_call(first, call, monkeypatch)
    with pytest.raises(Interrupted, match="holds that step and the same command resumes"):
        first.fit()
    monkeypatch.undo()
    _, meta = load_checkpoint(Path(cfg.out_dir) / LAST)
    epoch, step = divmod(call, STEPS)  # the step that got the signal is finished first
    assert (meta["epoch"], meta["step"]) == (epoch, step)

    resumed = make_trainer(cfg, name, seed=123)  # other random weights, as a new process
    with torch.no_grad():
        for p in resumed.method.parameters():
            p.add_(1.0)
    resumed.fit()
    assert (resumed.start_epoch, resumed.global_step) == (epoch, 3 * STEPS)
    a, b = full.method.state_dict(), resumed.method.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoint_by_wall_clock_inside_an_epoch(tmp_path, monkeypatch):
    """With train.checkpoint_every_s > 0, a checkpoint falls due at a read of the device
    inside an epoch, not only at its end; 0 keeps them at epochs' ends."""
    import fassl.train.loop as loop

    clock = iter(range(0, 10_000, 10))  # every look at the clock: 10 s later
    monkeypatch.setattr(loop.time, "monotonic", lambda: next(clock))
    cfg = tiny_config(
        tmp_path, "optim.epochs=1", "train.checkpoint_every_s=15", "train.log_every=2"
    )
    saved: list[tuple[int, int | None]] = []
    original = Trainer.save

    def record(self, epoch, step=None, loss_sum=0.0):
        saved.append((epoch, step))
        original(self, epoch, step, loss_sum)

    monkeypatch.setattr(Trainer, "save", record)
    make_trainer(cfg, "simclr").fit()
    inside = [s for e, s in saved if s is not None]
    assert inside and all(0 < s < STEPS for s in inside), saved
    assert saved[-1] == (0, None)  # the end of the run


def test_resume_under_another_world_size_says_the_augmentations_differ(tmp_path, capsys):
    cfg = tiny_config(tmp_path, *OVERRIDES)
    t = make_trainer(cfg, "simclr")
    t.save(0, 2, 1.0)
    tensors, meta = load_checkpoint(Path(cfg.out_dir) / LAST)
    assert tensors["rng/cpu"].shape[0] == 1 and meta["world_size"] == 1
    # a checkpoint from two processes: rank 0's and rank 1's states
    from fassl.train.checkpoint import save_checkpoint

    tensors["rng/cpu"] = tensors["rng/cpu"].repeat(2, 1)
    save_checkpoint(Path(cfg.out_dir) / LAST, tensors, meta)
    again = make_trainer(cfg, "simclr")
    again.fit()
    assert "not 1: the rest of epoch 1 takes the same batches" in capsys.readouterr().out
