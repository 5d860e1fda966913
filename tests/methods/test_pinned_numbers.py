"""Every method's numbers, pinned: the loss of one forward on two augmented views of a
fixed batch, and the weights after a short run of the real training loop.

A refactor of the methods, the augmentation or the loop that changes no arithmetic keeps
every number here; one that changes a loss, a random draw's order or a step fails.

The expected values live in tests/methods/pinned_numbers.json. After a change that is meant to
alter them, write them again and review the diff:

    FASSL_REGEN_PINNED=1 .venv/bin/python -m pytest -q tests/methods/test_pinned_numbers.py

The suite runs on one thread (tests/conftest.py), where CPU results repeat exactly. The
loss of one forward is pinned once (other kernels move it by about 1e-7); the trained
weights are pinned per kernel set (``capability``): ``make test`` runs the training tests
again on the AVX2 kernels, so write the file under both:

    FASSL_REGEN_PINNED=1 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 \\
        .venv/bin/python -m pytest -q tests/methods/test_pinned_numbers.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from fassl.methods import EpochContext, Method, build_method
from fassl.registry import METHOD_CLASSES
from fassl.runtime import Runtime
from fassl.train.loop import Trainer
from tests.helpers import tiny_config, tiny_data

pytestmark = [pytest.mark.trains, pytest.mark.slow]

PINNED = Path(__file__).with_name("pinned_numbers.json")
REGEN = os.environ.get("FASSL_REGEN_PINNED") == "1"
CPU = Runtime.cpu()
SEED = 0
LOSS_RTOL = 1e-5
# a group of weights' projection may move by this share of its norm: the same kernels
# repeat exactly on one thread; this only absorbs another CPU of the same kernel set
STATE_RTOL = 1e-6
PROJECTION_SEED = 1234
# keys of a method whose defaults are sized for real data: DINO's head (2048 hidden, 4096
# outputs) would take most of a minute here; its small one runs the same arithmetic
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "dino": ("dino.hidden_dim=24", "dino.bottleneck_dim=12", "dino.out_dim=20"),
}


def make_method(cfg, name: str) -> Method:
    torch.manual_seed(SEED)
    init = None
    if name == "fassl_rebalance":  # stage 2 starts from a stage-1 export
        init = build_method(cfg, "fassl_prototypes").export_state()
        torch.manual_seed(SEED)
    return build_method(cfg, name, init)


def make_trainer(tmp_path: Path, name: str, *overrides: str) -> Trainer:
    keys = METHOD_KEYS.get(name, ())
    cfg = tiny_config(tmp_path, "train.checkpoint_every_s=0", *keys, *overrides)
    return Trainer(make_method(cfg, name), tiny_data(), cfg, cfg.optim, tmp_path, CPU, "pin")


def first_loss(tmp_path: Path, name: str) -> float:
    """One forward on the augmented views of the first 8 images, with the extras the loop
    passes (labels, indices); BCL's boost at a fixed ramp of strengths."""
    trainer = make_trainer(tmp_path, name)
    method = trainer.method
    method.train()
    method.on_epoch_start(EpochContext(0, trainer.optim_cfg.epochs, trainer.embed))
    method.on_step_start(0, trainer.total_steps)
    if method.boost is not None:
        method.strength = torch.linspace(0.0, 1.0, len(trainer.images))  # type: ignore[attr-defined]
    index = torch.arange(8)
    torch.manual_seed(SEED + 1)
    views = trainer.views(index)
    extras = trainer.forward_extras(index)
    loss, _ = method(views, *extras)
    return float(loss.detach())


def fingerprint(state: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Per group of float tensors (the first four parts of their keys, e.g.
    ``encoder.backbone.blocks.0``): (the projection of all their elements on a fixed
    random direction, their norm); the projection moves when any element moves, the norm
    scales the tolerance. Integer and bool tensors (batch counters, masks, queue fills)
    are counted apart (``#counts``), as (their sum, 0): compared exactly."""
    groups: dict[str, list[torch.Tensor]] = {}
    for key in sorted(state):
        t = state[key].detach()
        group = ".".join(key.split(".")[:4])
        group += "" if t.is_floating_point() else "#counts"
        groups.setdefault(group, []).append(t.to(torch.float64).flatten())
    out: dict[str, list[float]] = {}
    for group, tensors in groups.items():
        t = torch.cat(tensors)
        if group.endswith("#counts"):
            out[group] = [float(t.sum()), 0.0]
            continue
        g = torch.Generator().manual_seed(PROJECTION_SEED)
        direction = torch.randn(t.numel(), generator=g, dtype=torch.float64)
        out[group] = [float(t @ direction), float(t.norm())]
    return out


def trained_state(tmp_path: Path, name: str) -> dict[str, list[float]]:
    """Two epochs of five steps through ``Trainer.fit`` (BCL boosts from the second)."""
    trainer = make_trainer(tmp_path, name)
    trainer.fit()
    return fingerprint(trainer.method.state_dict())


def capability() -> str:
    """The CPU kernels in use (``ATEN_CPU_CAPABILITY``): training numbers are pinned per
    kernel set, because the augmentation rounds crop boxes to whole pixels, so a last-bit
    difference of a kernel can move a crop by a pixel and the weights by far more."""
    return torch.backends.cpu.get_cpu_capability()


def load_pinned() -> dict:
    return json.loads(PINNED.read_text()) if PINNED.is_file() else {}


@pytest.mark.parametrize("name", list(METHOD_CLASSES))
def test_pinned_numbers(tmp_path, name):
    loss = first_loss(tmp_path / "loss", name)
    state = trained_state(tmp_path / "train", name)
    pinned = load_pinned()
    if REGEN:
        entry = pinned.setdefault(name, {"state": {}})
        entry["loss"] = loss
        entry["state"][capability()] = state
        PINNED.write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n")
        return
    assert name in pinned, f"{name}: no pinned numbers; write them with FASSL_REGEN_PINNED=1"
    want = pinned[name]
    assert loss == pytest.approx(want["loss"], rel=LOSS_RTOL, abs=LOSS_RTOL), "one forward"
    if capability() not in want["state"]:
        pytest.skip(f"no weights pinned for the {capability()} kernels (FASSL_REGEN_PINNED=1)")
    want_state = want["state"][capability()]
    assert state.keys() == want_state.keys(), "state keys"
    moved = [
        key
        for key, (proj, norm) in want_state.items()
        if abs(state[key][0] - proj) > STATE_RTOL * max(norm, 1.0)
        or abs(state[key][1] - norm) > STATE_RTOL * max(norm, 1.0)
    ]
    assert not moved, f"{len(moved)} groups of tensors moved after training, e.g. {moved[:5]}"
