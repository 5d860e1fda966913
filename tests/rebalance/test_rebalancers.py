"""The field's label-free re-balancers and the supervised long-tail reference: BCL's
momentum loss and strength, the temperature schedule, LDAM's margins and DRW weights,
each against values worked out by hand; then each method through the training loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fassl import losses
from fassl.config import load_config
from fassl.errors import ConfigError
from fassl.methods import build_method
from fassl.methods.bcl import boost_strength, momentum_loss_update
from fassl.methods.ldam import drw_active
from fassl.methods.temperature import TemperatureSchedule, cosine_temperature
from fassl.names import LAST
from fassl.runtime import Runtime
from fassl.train.checkpoint import load_checkpoint
from fassl.train.loop import Trainer
from tests.helpers import tiny_config, tiny_data

# The training loop end to end: `make test` runs these again on the AVX2 kernels (Makefile).
pytestmark = pytest.mark.trains

# ------------------------------------------------------------------ per-image NT-Xent


def test_nt_xent_per_image_averages_each_images_two_anchors() -> None:
    # The two-image example of test_losses: anchors a0, a1 share one value, b0, b1 another.
    z1 = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    z2 = torch.tensor([[3.0, 4.0], [4.0, 3.0]])
    t = 0.5

    def nls(pos: float, others: list[float]) -> float:
        return -math.log(
            math.exp(pos / t) / (math.exp(pos / t) + sum(math.exp(o / t) for o in others))
        )

    a = nls(0.6, [0.0, 0.8])  # a_i: positive b_i at .6, negatives .0 and .8
    b = nls(0.6, [0.8, 0.96])  # b_i: positive a_i at .6, negatives .8 and .96
    per_image = losses.nt_xent_per_image(z1, z2, t)
    assert per_image.tolist() == pytest.approx([(a + b) / 2, (a + b) / 2], rel=1e-6)
    torch.manual_seed(0)
    x, y = torch.randn(5, 4), torch.randn(5, 4)
    assert torch.allclose(losses.nt_xent_per_image(x, y, 0.2).mean(), losses.nt_xent(x, y, 0.2))
    # a tensor temperature (the schedule's buffer) gives the same numbers as a float
    assert torch.allclose(losses.nt_xent(x, y, torch.tensor(0.2)), losses.nt_xent(x, y, 0.2))


# ------------------------------------------------------------------------------- BCL


def test_momentum_loss_first_sets_then_averages() -> None:
    momentum = torch.tensor([0.0, 5.0, 0.0, 2.0])
    seen = torch.tensor([False, True, False, True])
    new_m, new_seen = momentum_loss_update(
        momentum, seen, torch.tensor([0, 1]), torch.tensor([3.0, 1.0]), beta=0.9
    )
    # image 0 first seen: its loss; image 1: 0.9 * 5 + 0.1 * 1 = 4.6; others untouched
    assert new_m.tolist() == pytest.approx([3.0, 4.6, 0.0, 2.0])
    assert new_seen.tolist() == [True, True, False, True]
    assert momentum.tolist() == [0.0, 5.0, 0.0, 2.0]  # the input is not modified


def test_boost_strength_by_hand() -> None:
    momentum = torch.tensor([1.0, 2.0, 3.0, 9.0])
    seen = torch.tensor([True, True, True, False])
    # seen values 1, 2, 3: mean 2, unbiased std 1 -> z = -1, 0, 1 -> /max|z| = 1 -> /2 + 1/2
    assert boost_strength(momentum, seen).tolist() == pytest.approx([0.0, 0.5, 1.0, 0.0])
    skew = boost_strength(torch.tensor([1.0, 1.0, 4.0]), torch.ones(3, dtype=torch.bool))
    # z = -1/sqrt(3), -1/sqrt(3), 2/sqrt(3): max |z| 2/sqrt(3) -> -0.5, -0.5, 1 -> .25 .25 1
    assert skew.tolist() == pytest.approx([0.25, 0.25, 1.0])
    # nothing to normalise by yet: no boost
    assert boost_strength(torch.zeros(3), torch.zeros(3, dtype=torch.bool)).sum() == 0
    assert boost_strength(torch.full((3,), 2.0), torch.ones(3, dtype=torch.bool)).sum() == 0


# ----------------------------------------------------------------- temperature schedule


def test_cosine_temperature_by_hand() -> None:
    assert cosine_temperature(0, 100, 0.1, 1.0) == pytest.approx(1.0)
    assert cosine_temperature(50, 100, 0.1, 1.0) == pytest.approx(0.1)
    assert cosine_temperature(25, 100, 0.1, 1.0) == pytest.approx(0.55)
    assert cosine_temperature(100, 100, 0.1, 1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        cosine_temperature(0, 0, 0.1, 1.0)


def test_schedule_periods() -> None:
    fixed = TemperatureSchedule(0.2)
    assert fixed.at(37, 100, 10) == 0.2
    five = TemperatureSchedule(0.2, "cosine", 0.1, 1.0, period_epochs=0, rule="step")
    assert five.at(10, 100, 10) == pytest.approx(0.1)  # 5 periods of 20 steps: a trough
    two_epochs = TemperatureSchedule(0.2, "cosine", 0.1, 1.0, period_epochs=2, rule="step")
    assert two_epochs.at(10, 100, 10) == pytest.approx(0.1)  # 10 steps an epoch: T = 20
    assert two_epochs.at(20, 100, 10) == pytest.approx(1.0)
    # epoch rule: held for the epoch, t = the 1-based epoch; T = 4 epochs of 10 steps
    held = TemperatureSchedule(0.2, "cosine", 0.1, 1.0, period_epochs=4)
    assert [held.at(s, 100, 10) for s in (0, 9)] == [pytest.approx(0.55)] * 2  # epoch 1
    assert held.at(10, 100, 10) == pytest.approx(0.1)  # epoch 2: the trough
    assert held.at(39, 100, 10) == pytest.approx(1.0)  # epoch 4: a whole period
    # the rule's choices are config's (temperature.rule)
    with pytest.raises(ConfigError, match=r"temperature\.rule"):
        load_config(None, ["temperature.rule=batch"])


# --------------------------------------------------------------------------- LDAM-DRW


def test_ldam_margins_by_hand() -> None:
    m = losses.ldam_margins(torch.tensor([10000, 16, 1]), max_margin=0.5)
    # n^(-1/4) = 0.1, 0.5, 1 -> scaled so that the largest is 0.5
    assert m.tolist() == pytest.approx([0.05, 0.25, 0.5])
    with pytest.raises(ValueError):
        losses.ldam_margins(torch.tensor([3, 0]), 0.5)


def test_drw_weights_by_hand() -> None:
    assert losses.drw_class_weights(torch.tensor([100, 10]), 0.0).tolist() == [1.0, 1.0]
    w = losses.drw_class_weights(torch.tensor([2, 1]), 0.5)
    # (1 - .5) / (1 - .5^n): 2/3 and 1 -> scaled to sum 2: 0.8 and 1.2
    assert w.tolist() == pytest.approx([0.8, 1.2])


def test_ldam_loss_by_hand() -> None:
    cos = torch.tensor([[0.5, 0.2]])
    margins = torch.tensor([0.1, 0.3])
    s = 10.0
    # class 0 true: logits 10 * (0.4, 0.2)
    expected = -math.log(math.exp(4.0) / (math.exp(4.0) + math.exp(2.0)))
    got = losses.ldam_loss(cos, torch.tensor([0]), margins, s)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # with class weights it is the weighted mean of the per-sample losses
    cos2 = torch.tensor([[0.5, 0.2], [0.1, 0.6]])
    y = torch.tensor([0, 1])
    w = torch.tensor([1.0, 3.0])
    per = F.cross_entropy(s * (cos2 - torch.tensor([[0.1, 0.0], [0.0, 0.3]])), y, reduction="none")
    weighted = (per * torch.tensor([1.0, 3.0])).sum() / 4.0
    assert losses.ldam_loss(cos2, y, margins, s, w).item() == pytest.approx(weighted.item())


def test_drw_switches_on_at_the_configured_share() -> None:
    assert [drw_active(e, 10, 0.8) for e in range(10)] == [False] * 8 + [True] * 2
    assert drw_active(0, 10, 0.0)


# ------------------------------------------------------------------ through the loop


def _fit(cfg, name, data=None):
    torch.manual_seed(cfg.seed)
    method = build_method(cfg, name)
    trainer = Trainer(method, data or tiny_data(), cfg, cfg.optim, cfg.out_dir, Runtime.cpu(), "s")
    trainer.fit()
    return trainer


@pytest.mark.parametrize("name", ["bcl_i", "bcl_d"])
@pytest.mark.parametrize("ops", ["randaugment", "common"])
def test_bcl_tracks_every_seen_image_and_boosts_by_its_loss(tmp_path, name, ops) -> None:
    cfg = tiny_config(tmp_path, "optim.epochs=3", f"bcl.ops={ops}", "train.checkpoint_every_s=0")
    trainer = _fit(cfg, name)
    method = trainer.method
    n = len(trainer.data.pretrain)
    assert method.momentum.shape == (n,) and bool(method.seen.any())
    assert torch.isfinite(method.momentum).all() and bool((method.momentum[method.seen] > 0).all())
    method.refresh_strength()
    s = method.strength
    assert float(s.min()) >= 0.0 and float(s.max()) <= 1.0
    # higher momentum loss, stronger boost; the farther extreme reaches 0 or 1
    seen = method.seen.nonzero().squeeze(1)
    order = method.momentum[seen].argsort()
    assert bool((s[seen][order].diff() >= 0).all())
    assert float(s[seen].max()) == pytest.approx(1.0) or float(s[seen].min()) == pytest.approx(0)
    # the momentum is saved with the checkpoint, so a resumed run continues exactly
    tensors, _ = load_checkpoint(tmp_path / LAST)
    assert torch.equal(tensors["model/momentum"], method.momentum)


@pytest.mark.parametrize(
    ("name", "extra"),
    [("bcl_i", ()), ("bcl_d", ()), ("simclr", ("temperature.schedule=cosine",)), ("ldam_drw", ())],
)
def test_resume_matches_uninterrupted_run(tmp_path, monkeypatch, name, extra) -> None:
    overrides = ("optim.epochs=3", "train.checkpoint_every_s=0", "ldam.drw_start=0.5", *extra)
    full = _fit(tiny_config(tmp_path / "full", *overrides), name)
    cfg = tiny_config(tmp_path / "killed", *overrides)
    original_save = Trainer.save

    def save_then_die(self, epoch):
        original_save(self, epoch)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _fit(cfg, name)
    monkeypatch.setattr(Trainer, "save", original_save)
    torch.manual_seed(123)
    resumed = _fit(cfg, name)
    assert resumed.start_epoch == 2
    a, b = full.method.state_dict(), resumed.method.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_scheduled_temperature_reaches_the_loss(tmp_path) -> None:
    cfg = tiny_config(
        tmp_path,
        "temperature.schedule=cosine",
        "temperature.period_epochs=2",
        "temperature.rule=step",
    )
    method = build_method(cfg, "simclr")
    trainer = Trainer(method, tiny_data(), cfg, cfg.optim, tmp_path, Runtime.cpu(), "s")
    steps = trainer.steps_per_epoch  # the period is 2 epochs: a trough after one epoch
    method.on_epoch_start(type("Ctx", (), {"num_epochs": 2, "epoch": 0})())  # type: ignore[arg-type]
    method.on_step_start(0, trainer.total_steps)
    assert float(method.temperature) == pytest.approx(1.0)
    method.on_step_start(steps, trainer.total_steps)
    assert float(method.temperature) == pytest.approx(0.1)
    # fixed: the plain float, as before the schedule existed
    assert build_method(tiny_config(tmp_path), "simclr").temperature == 0.2


def test_ldam_reweights_late_and_refuses_unlabeled_data(tmp_path) -> None:
    import dataclasses

    from fassl.errors import ConfigError

    cfg = tiny_config(tmp_path, "optim.epochs=2", "ldam.drw_start=0.5")
    trainer = _fit(cfg, "ldam_drw")
    method = trainer.method
    counts = torch.tensor(trainer.data.class_counts)
    # in the second (last) epoch the class-balanced weights are on: rarer = heavier
    assert torch.allclose(method.class_weights, losses.drw_class_weights(counts, 0.9999))
    assert method.class_weights[2] > method.class_weights[0]
    assert torch.allclose(method.margins, losses.ldam_margins(counts, 0.5))
    unlabeled = dataclasses.replace(tiny_data(), labeled=False)
    with pytest.raises(ConfigError, match="has none"):
        Trainer(
            build_method(cfg, "ldam_drw"), unlabeled, cfg, cfg.optim, tmp_path, Runtime.cpu(), "s"
        )
