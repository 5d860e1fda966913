import copy
import math

import pytest
import torch

from fassl.losses import byol_loss
from fassl.methods import build_method
from fassl.models.pruning import pruned_norms
from tests.helpers import tiny_config

# The training loop end to end: `make test` runs these again on the AVX2 kernels (Makefile).
pytestmark = pytest.mark.trains

METHODS = ["simclr", "sdclr", "byol", "swav", "fassl_prototypes"]


def views(n=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g)]


@pytest.mark.parametrize("name", METHODS)
def test_loss_finite_and_gradients_reach_backbone(tmp_path, name):
    torch.manual_seed(0)
    method = build_method(tiny_config(tmp_path), name)
    loss, logs = method(views())
    assert loss.ndim == 0 and torch.isfinite(loss) and "loss" in logs
    loss.backward()
    grads = [p.grad for p in method.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_sdclr_pruned_branch_uses_mask_and_own_bn(tmp_path):
    torch.manual_seed(0)
    m = build_method(tiny_config(tmp_path, "sdclr.prune_ratio=0.9"), "sdclr")
    masks = m.masks()
    total = sum(x.numel() for x in masks.values())
    assert sum(int(x.sum()) for x in masks.values()) == total - math.ceil(0.9 * total)
    x = views()[0]
    m.train()
    # Reference: a copy whose conv weights are zeroed by the mask, run through pruned BNs.
    ref = copy.deepcopy(m.encoder)
    with torch.no_grad():
        params = dict(ref.named_parameters())
        for name, mask in masks.items():
            params[name].mul_(mask)
    with pruned_norms(ref):
        expected = ref(x)[1]
    got = m.pruned_forward(x)[1]
    assert torch.allclose(got, expected, atol=1e-5)
    dense = m.encoder(x)[1]
    assert not torch.allclose(dense, got, atol=1e-3)


def test_sdclr_export_is_plain_encoder(tmp_path):
    cfg = tiny_config(tmp_path)
    state = build_method(cfg, "sdclr").export_state()
    assert not any(".pruned." in k or ".dense." in k for k in state)
    build_method(cfg, "fassl_prototypes", state)  # loads strictly


def stage2(tmp_path, *overrides):
    cfg = tiny_config(tmp_path, *overrides)
    torch.manual_seed(0)
    init = build_method(cfg, "fassl_prototypes").export_state()
    return build_method(cfg, "fassl_rebalance", init), init


def test_stage2_starts_from_teacher_and_keeps_prototypes(tmp_path):
    m, init = stage2(tmp_path)
    assert torch.equal(m.prototypes, init["prototypes"])
    assert not m.prototypes.requires_grad and "prototypes" not in dict(m.named_parameters())
    for k, v in m.teacher.state_dict().items():
        assert torch.equal(v, init[k])
        assert torch.equal(m.encoder.state_dict()[k], init[k])
    assert all(not p.requires_grad for p in m.teacher.parameters())


def test_stage2_without_prototypes_is_refused(tmp_path):
    cfg = tiny_config(tmp_path)
    state = build_method(cfg, "simclr").export_state()
    with pytest.raises(ValueError, match="prototypes"):
        build_method(cfg, "fassl_rebalance", state, "simclr.safetensors")


def test_phi_one_is_byol_from_teacher(tmp_path):
    m, _ = stage2(tmp_path, "rebalance.weight=none")
    v1, v2 = views()
    loss, _ = m([v1, v2])
    n = v1.shape[0]
    s = m.encoder(torch.cat([v1, v2]))[1]
    p = m.predictor(s)
    with torch.no_grad():
        t = m.teacher(torch.cat([v1, v2]))[1]
    assert loss.item() == pytest.approx(byol_loss(p[:n], p[n:], t[:n], t[n:]).item(), rel=1e-4)


def test_stage2_ema_follows_student(tmp_path):
    m, _ = stage2(tmp_path, "rebalance.ema=0.5", "rebalance.ema_end=0.5")
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in m.teacher.named_parameters()}
    student = dict(m.encoder.named_parameters())
    m.on_step_end(0, 10)
    for k, v in m.teacher.named_parameters():
        assert torch.allclose(v, 0.5 * before[k] + 0.5 * student[k])


@pytest.mark.parametrize("weight", ["paper", "paper_normalized", "softmax_density"])
def test_stage2_weights_average_one(tmp_path, weight):
    m, _ = stage2(tmp_path, f"rebalance.weight={weight}")
    loss, logs = m(views())
    assert torch.isfinite(loss) and logs["weight_max"] >= 1.0


@pytest.mark.parametrize("strength", [0.25, 0.5])
def test_stage2_strength_bounds_the_spread_of_weights(tmp_path, strength):
    # clip at +- 2 std of log phi standardised to std s: max / min <= exp(4 s)
    m, _ = stage2(tmp_path, "rebalance.weight=paper", f"rebalance.strength={strength}")
    _, logs = m(views())
    ratio = (logs["weight_max"] / logs["weight_min"]).item()
    assert 1.0 < ratio <= math.exp(4 * strength) + 1e-4


def test_swav_queue_fills_and_rolls(tmp_path):
    cfg = tiny_config(tmp_path, "swav.queue_length=5")
    m = build_method(cfg, "swav")
    assert m.queue.shape == (2, 5, cfg.model.proj_dim)
    a = torch.ones(3, cfg.model.proj_dim)
    m.push_queue(a, 2 * a)
    assert int(m.queue_filled) == 3
    assert torch.equal(m.queue[0, :3], a) and torch.equal(m.queue[1, :3], 2 * a)
    assert torch.equal(m.queue[0, 3:], torch.zeros(2, cfg.model.proj_dim))
    b = torch.full((3, cfg.model.proj_dim), 7.0)
    m.push_queue(b, b)
    assert int(m.queue_filled) == 5
    # newest first; the oldest rows that do not fit are dropped
    assert torch.equal(m.queue[0, :3], b) and torch.equal(m.queue[0, 3:], a[:2])


def test_swav_prototypes_frozen_at_first(tmp_path):
    cfg = tiny_config(tmp_path, "swav.freeze_prototypes_steps=2")
    m = build_method(cfg, "swav")
    loss, _ = m(views())
    loss.backward()
    assert m.prototypes.weight.grad is not None
    m.on_after_backward(step=1)
    assert m.prototypes.weight.grad is None
    loss, _ = m(views())
    loss.backward()
    m.on_after_backward(step=2)
    assert m.prototypes.weight.grad is not None
