"""Losses against values worked out by hand on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fassl import losses, rebalance
from fassl.methods import momentum
from fassl.rebalance import reweighters

SQRT2 = math.sqrt(2.0)


def _neg_log_softmax(pos: float, others: list[float], t: float) -> float:
    """-log(exp(pos/t) / (exp(pos/t) + sum exp(o/t))) from plain floats."""
    denom = math.exp(pos / t) + sum(math.exp(o / t) for o in others)
    return -math.log(math.exp(pos / t) / denom)


# ------------------------------------------------------------------------------ NT-Xent


def test_nt_xent_two_images_by_hand() -> None:
    # Rows normalise to a0 = (1, 0), a1 = (0, 1), b0 = (.6, .8), b1 = (.8, .6).
    z1 = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    z2 = torch.tensor([[3.0, 4.0], [4.0, 3.0]])
    t = 0.5
    # Cosines: a0.a1 = 0, a0.b0 = .6, a0.b1 = .8, a1.b0 = .8, a1.b1 = .6, b0.b1 = .96.
    per_anchor = [
        _neg_log_softmax(0.6, [0.0, 0.8], t),  # a0: positive b0, negatives a1, b1
        _neg_log_softmax(0.6, [0.0, 0.8], t),  # a1: positive b1, negatives a0, b0
        _neg_log_softmax(0.6, [0.8, 0.96], t),  # b0: positive a0, negatives a1, b1
        _neg_log_softmax(0.6, [0.8, 0.96], t),  # b1: positive a1, negatives a0, b0
    ]
    expected = sum(per_anchor) / 4
    assert losses.nt_xent(z1, z2, t).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_perfect_pairs_are_low_and_gradients_flow() -> None:
    torch.manual_seed(0)
    z = torch.randn(6, 8)
    z1 = z.clone().requires_grad_(True)
    z2 = (z + 0.01 * torch.randn(6, 8)).requires_grad_(True)
    loss_aligned = losses.nt_xent(z1, z2, 0.1)
    loss_shuffled = losses.nt_xent(z1, z2.roll(1, dims=0), 0.1)
    assert loss_aligned < loss_shuffled
    loss_aligned.backward()
    assert z1.grad is not None and z2.grad is not None
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


# -------------------------------------------------------------------------- Eq. 1 and 2


def test_prototype_scores_by_hand() -> None:
    z = torch.tensor([[2.0, 3.0]])
    protos = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    raw = losses.prototype_scores(z, protos, normalize=False)
    assert raw.tolist() == [[2.0, 5.0]]
    unit = losses.prototype_scores(z, protos, normalize=True)
    expected = [2 / math.sqrt(13), 5 / (math.sqrt(13) * SQRT2)]
    assert unit[0].tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("normalize", [False, True])
def test_prototype_contrastive_loss_is_nt_xent_of_scores(normalize: bool) -> None:
    torch.manual_seed(1)
    z1 = torch.randn(5, 4, requires_grad=True)
    z2 = torch.randn(5, 4)
    protos = torch.randn(3, 4, requires_grad=True)
    loss = losses.prototype_contrastive_loss(z1, z2, protos, 0.2, normalize)
    p = protos.detach()
    if normalize:
        p = p / p.norm(dim=1, keepdim=True)
        h1 = (z1.detach() / z1.detach().norm(dim=1, keepdim=True)) @ p.T
        h2 = (z2 / z2.norm(dim=1, keepdim=True)) @ p.T
    else:
        h1, h2 = z1.detach() @ p.T, z2 @ p.T
    assert loss.item() == pytest.approx(losses.nt_xent(h1, h2, 0.2).item(), rel=1e-6)
    loss.backward()  # Eq. 2 trains both the encoder output and P
    assert z1.grad is not None and z1.grad.abs().sum() > 0
    assert protos.grad is not None and protos.grad.abs().sum() > 0


# ------------------------------------------------------------------------------- Eq. 3


def test_log_rebalance_weight_by_hand_and_ordering() -> None:
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # sum of prototypes = (1, 1)
    z = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])  # close to the prototypes, then far
    raw = rebalance.log_rebalance_weight(z, protos, normalize=False)
    assert raw.tolist() == pytest.approx([-2.0, 1.0])
    unit = rebalance.log_rebalance_weight(z, protos, normalize=True)
    assert unit.tolist() == pytest.approx([-SQRT2, 1.0], rel=1e-6)
    # phi = exp(log phi): the embedding less similar to the prototypes weighs more.
    assert raw[1] > raw[0] and unit[1] > unit[0]


def test_log_rebalance_weight_does_not_overflow() -> None:
    z = torch.full((2, 4), 1e3)
    protos = torch.full((8, 4), 1e3)
    log_phi = rebalance.log_rebalance_weight(z, protos, normalize=False)
    # log phi = -3.2e7: exp() underflows to 0 for both, so a naive phi / mean(phi) is 0/0.
    assert torch.isfinite(log_phi).all()
    weights = rebalance.normalize_weights(log_phi, clip_std=0.0, global_stats=False)
    assert weights.tolist() == pytest.approx([1.0, 1.0])


def test_no_gradient_through_phi() -> None:
    z = torch.randn(4, 3, requires_grad=True)
    protos = torch.randn(5, 3, requires_grad=True)
    log_phis = [
        rebalance.log_rebalance_weight(z, protos, normalize=False),
        rebalance.log_rebalance_weight(z, protos, normalize=True),
        reweighters.log_weight_softmax_density(z, protos, 0.1),
        reweighters.log_weight_cluster_size(z, protos, torch.tensor([3, 1, 4, 1, 5])),
        reweighters.log_weight_knn(z, protos, 2),
    ]
    for log_phi in log_phis:
        assert not log_phi.requires_grad
    weight = rebalance.normalize_weights(log_phis[0].requires_grad_(True), 2.0, False)
    assert not weight.requires_grad
    pred = torch.randn(4, 3, requires_grad=True)
    phi = torch.rand(4, requires_grad=True)
    losses.consistency_loss(pred, z, phi).backward()
    assert phi.grad is None and z.grad is None and pred.grad is not None


def test_normalize_weights_clip_by_hand() -> None:
    log_phi = torch.tensor([0.0, 0.0, 0.0, 0.0, 10.0])
    # mean 2, population std sqrt((4 * 2**2 + 8**2) / 5) = 4: bounds [-2, 6] clamp 10 to 6.
    weights = rebalance.normalize_weights(log_phi, clip_std=1.0, global_stats=False)
    mean = (4 + math.exp(6)) / 5
    expected = [1 / mean] * 4 + [math.exp(6) / mean]
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-6)
    assert not weights.requires_grad


def test_normalize_weights_average_one_and_respect_bounds() -> None:
    torch.manual_seed(2)
    log_phi = torch.randn(64) * 3
    c = 1.5
    weights = rebalance.normalize_weights(log_phi, clip_std=c, global_stats=False)
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-5)
    # Clamping to mean +- c std bounds the log-ratio of any two weights by 2 c std.
    spread = torch.log(weights.max() / weights.min()).item()
    assert spread <= 2 * c * log_phi.std(correction=0).item() + 1e-4
    # Without clipping the weights are exp(log phi) rescaled: the ratios are untouched.
    free = rebalance.normalize_weights(log_phi, clip_std=0.0, global_stats=False)
    ratio = torch.exp(log_phi - log_phi[0])
    assert torch.allclose(free / free[0], ratio, rtol=1e-4)


def test_normalize_weights_strength_by_hand() -> None:
    # mean 2, population std 4 (as above): standardised (-0.5, -0.5, -0.5, -0.5, 2),
    # times strength 0.2 -> (-0.1, ..., 0.4); clip 1 std of that (0.2) around 0 -> 0.2.
    log_phi = torch.tensor([0.0, 0.0, 0.0, 0.0, 10.0])
    weights = rebalance.normalize_weights(log_phi, clip_std=1.0, global_stats=False, strength=0.2)
    raw = [math.exp(-0.1)] * 4 + [math.exp(0.2)]
    mean = sum(raw) / 5
    assert weights.tolist() == pytest.approx([r / mean for r in raw], rel=1e-6)
    # Scale and shift of log phi no longer matter, only the ranking and the strength.
    again = rebalance.normalize_weights(log_phi * 1e3 - 7, 1.0, False, strength=0.2)
    assert torch.allclose(weights, again, rtol=1e-5)
    # A constant batch gives equal weights, not 0/0.
    flat = rebalance.normalize_weights(torch.full((4,), 3.0), 2.0, False, strength=0.5)
    assert flat.tolist() == [1.0] * 4


def test_normalize_weights_finite_for_extreme_inputs() -> None:
    log_phi = torch.tensor([1e4, -1e4, 0.0])
    weights = rebalance.normalize_weights(log_phi, clip_std=0.0, global_stats=False)
    # exp(0) = 1 for the largest, exp(-1e4) and exp(-2e4) underflow to 0; mean 1/3.
    assert weights.tolist() == [3.0, 0.0, 0.0]
    clipped = rebalance.normalize_weights(log_phi, clip_std=1.0, global_stats=False)
    assert torch.isfinite(clipped).all()
    assert clipped.mean().item() == pytest.approx(1.0, abs=1e-6)
    single = rebalance.normalize_weights(torch.tensor([5.0]), clip_std=2.0, global_stats=True)
    assert single.tolist() == [1.0]


# ---------------------------------------------------------------- alternative weights


def test_log_weight_softmax_density_by_hand() -> None:
    protos = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z = torch.tensor([[3.0, 0.0], [-1.0, -1.0]])
    got = reweighters.log_weight_softmax_density(z, protos, temperature=0.5)
    # z0: cosines (1, 0); z1: cosines (-1/sqrt2, -1/sqrt2).
    expected = [
        -math.log(math.exp(1 / 0.5) + math.exp(0.0)),
        -math.log(2 * math.exp(-1 / SQRT2 / 0.5)),
    ]
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    assert got[1] > got[0]


def test_log_weight_cluster_size_by_hand() -> None:
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    sizes = torch.tensor([10, 0])  # an empty cluster counts as 1
    z = torch.tensor([[2.0, 1.0], [0.1, 3.0]])  # nearest: prototype 0, prototype 1
    got = reweighters.log_weight_cluster_size(z, protos, sizes)
    assert got.tolist() == pytest.approx([-math.log(10.0), 0.0])
    with pytest.raises(ValueError):
        reweighters.log_weight_cluster_size(z, protos, torch.tensor([1, 2, 3]))


def test_log_weight_knn_by_hand() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    z = torch.tensor([[2.0, 0.0], [0.0, -1.0]])
    got = reweighters.log_weight_knn(z, bank, k=2)
    # z0: cosines (1, 0, 1/sqrt2), top 2 = 1 and 1/sqrt2.
    # z1: cosines (0, -1, -1/sqrt2), top 2 = 0 and -1/sqrt2.
    expected = [-(1 + 1 / SQRT2) / 2, -(0 - 1 / SQRT2) / 2]
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        reweighters.log_weight_knn(z, bank, k=4)


# ---------------------------------------------------------------------- BYOL / Eq. 3


def test_consistency_loss_is_two_minus_two_cos() -> None:
    pred = torch.tensor([[1.0, 0.0], [0.0, 5.0]], requires_grad=True)
    target = torch.tensor([[1.0, 1.0], [0.0, -2.0]], requires_grad=True)
    per_sample = [2 - 2 / SQRT2, 2 - 2 * (-1.0)]
    loss = losses.consistency_loss(pred, target)
    assert loss.item() == pytest.approx(sum(per_sample) / 2, rel=1e-6)
    weighted = losses.consistency_loss(pred, target, torch.tensor([2.0, 0.5]))
    expected = (2.0 * per_sample[0] + 0.5 * per_sample[1]) / 2
    assert weighted.item() == pytest.approx(expected, rel=1e-6)
    weighted.backward()
    assert target.grad is None  # stop-gradient on the teacher side
    assert pred.grad is not None


def test_byol_loss_by_hand() -> None:
    p1 = torch.tensor([[1.0, 0.0]])
    p2 = torch.tensor([[0.0, 2.0]])
    z1 = torch.tensor([[3.0, 4.0]])
    z2 = torch.tensor([[0.0, -1.0]])
    # cos(p1, z2) = 0 -> 2; cos(p2, z1) = 4/5 -> 0.4.
    assert losses.byol_loss(p1, p2, z1, z2).item() == pytest.approx(2.4, rel=1e-6)


# ------------------------------------------------------------------------------ SwAV


def _swav_sinkhorn_numpy(scores: np.ndarray, eps: float, iters: int) -> np.ndarray:
    """SwAV's Algorithm 1 written out in exp space (float64, moderate scores only)."""
    q = np.exp(scores / eps).T  # K x B
    k, b = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    return (q * b).T


def test_sinkhorn_matches_swav_algorithm_and_marginals() -> None:
    torch.manual_seed(3)
    scores = torch.nn.functional.normalize(torch.randn(12, 8), dim=1)
    scores = scores @ torch.nn.functional.normalize(torch.randn(4, 8), dim=1).T  # cosines
    codes = losses.sinkhorn(scores, epsilon=0.05, iterations=3)
    ref = _swav_sinkhorn_numpy(scores.double().numpy(), 0.05, 3)
    assert np.allclose(codes.numpy(), ref, atol=1e-5)
    # The last step normalises rows: exact. Columns reach B/K = 3 as iterations grow.
    assert torch.allclose(codes.sum(dim=1), torch.ones(12), atol=1e-6)
    converged = losses.sinkhorn(scores, epsilon=0.05, iterations=300)
    assert torch.allclose(converged.sum(dim=1), torch.ones(12), atol=1e-6)
    assert torch.allclose(converged.sum(dim=0), torch.full((4,), 3.0), atol=1e-3)


def test_sinkhorn_finite_for_extreme_bf16_scores() -> None:
    torch.manual_seed(4)
    signs = torch.randint(0, 2, (16, 4)).float() * 2 - 1
    scores = (signs * 1e4).to(torch.bfloat16)  # scores / epsilon = +-1e6
    codes = losses.sinkhorn(scores, epsilon=0.01, iterations=3)
    assert codes.dtype == torch.float32
    assert torch.isfinite(codes).all()
    assert torch.allclose(codes.sum(dim=1), torch.ones(16), atol=1e-5)
    converged = losses.sinkhorn(scores, epsilon=0.01, iterations=100)
    assert torch.isfinite(converged).all()
    assert torch.allclose(converged.sum(dim=1), torch.ones(16), atol=1e-5)
    assert torch.allclose(converged.sum(dim=0), torch.full((4,), 4.0), atol=1e-3)


def test_sinkhorn_without_iterations_is_row_softmax() -> None:
    scores = torch.tensor([[0.0, 0.1], [0.2, -0.1]])
    codes = losses.sinkhorn(scores, epsilon=0.1, iterations=0)
    row0 = [1 / (1 + math.e), math.e / (1 + math.e)]  # softmax of (0, 1)
    assert codes[0].tolist() == pytest.approx(row0, rel=1e-6)


def test_swav_loss_by_hand() -> None:
    scores1 = torch.tensor([[1.0, 0.0]])
    scores2 = torch.tensor([[0.0, 0.0]])
    codes1 = torch.tensor([[0.25, 0.75]])
    codes2 = torch.tensor([[1.0, 0.0]])
    t = 0.5
    # log_softmax(scores1 / t) = (2, 0) - log(e^2 + 1); log_softmax(scores2 / t) = -log 2.
    loss12 = -(2 - math.log(math.exp(2) + 1))
    loss21 = -(0.25 * -math.log(2) + 0.75 * -math.log(2))
    got = losses.swav_loss(scores1, scores2, codes1, codes2, t)
    assert got.item() == pytest.approx(0.5 * (loss12 + loss21), rel=1e-6)


# ------------------------------------------------------------------------------- EMA


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(5)
    teacher, student = _net(), _net()
    student(torch.randn(8, 3))  # moves the student's running statistics
    return teacher, student


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0])
def test_ema_update(tau: float) -> None:
    teacher, student = _pair()
    before = [p.detach().clone() for p in teacher.parameters()]
    momentum.ema_update(teacher, student, tau)
    for t_param, s_param, old in zip(
        teacher.parameters(), student.parameters(), before, strict=True
    ):
        if tau == 0.0:
            assert torch.equal(t_param, s_param)
        elif tau == 1.0:
            assert torch.equal(t_param, old)
        else:
            assert torch.allclose(t_param, (old + s_param) / 2)
    # Buffers follow the student whatever tau is.
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers(), strict=True):
        assert torch.equal(t_buf, s_buf)


def test_ema_update_rejects_mismatched_structure() -> None:
    with pytest.raises(ValueError, match="only in the student"):
        momentum.ema_update(nn.Sequential(nn.Linear(3, 4)), _net(), 0.9)
    with pytest.raises(ValueError, match="shape"):
        momentum.ema_update(nn.Linear(3, 4), nn.Linear(3, 5), 0.9)
    with pytest.raises(ValueError, match="tau"):
        momentum.ema_update(nn.Linear(3, 4), nn.Linear(3, 4), 1.5)


def test_cosine_momentum() -> None:
    assert momentum.cosine_momentum(0, 100, 0.99, 1.0) == pytest.approx(0.99)
    assert momentum.cosine_momentum(50, 100, 0.99, 1.0) == pytest.approx(0.995)
    assert momentum.cosine_momentum(100, 100, 0.99, 1.0) == pytest.approx(1.0)
    # A quarter in: end - (end - base) * (cos(pi / 4) + 1) / 2.
    quarter = 1.0 - 0.01 * (math.cos(math.pi / 4) + 1) / 2
    assert momentum.cosine_momentum(25, 100, 0.99, 1.0) == pytest.approx(quarter)
    assert momentum.cosine_momentum(500, 100, 0.99, 1.0) == pytest.approx(1.0)
    assert momentum.cosine_momentum(7, 10, 0.9, 0.9) == pytest.approx(0.9)
    with pytest.raises(ValueError):
        momentum.cosine_momentum(0, 0, 0.99, 1.0)


# ---------------------------------------------------------------------- bf16 autocast


def test_bf16_autocast_inputs_give_fp32_losses_close_to_fp32() -> None:
    torch.manual_seed(6)
    layer = nn.Linear(16, 8)
    x1, x2 = torch.randn(32, 16), torch.randn(32, 16)
    protos = torch.randn(6, 8)
    bank = torch.randn(20, 8)

    def compute(z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        s1 = losses.prototype_scores(z1, protos, normalize=True)
        s2 = losses.prototype_scores(z2, protos, normalize=True)
        q1 = losses.sinkhorn(s1, 0.05, 3)
        q2 = losses.sinkhorn(s2, 0.05, 3)
        log_phi = rebalance.log_rebalance_weight(z2, protos, normalize=True)
        weight = rebalance.normalize_weights(log_phi, 2.0, global_stats=False)
        return {
            "nt_xent": losses.nt_xent(z1, z2, 0.2),
            "contra": losses.prototype_contrastive_loss(z1, z2, protos, 0.2, True),
            "reb": losses.consistency_loss(z1, z2, weight),
            "byol": losses.byol_loss(z1, z2, z2, z1),
            "swav": losses.swav_loss(s1, s2, q1, q2, 0.1),
            "weight": weight,
            "density": reweighters.log_weight_softmax_density(z1, protos, 0.1),
            "knn": reweighters.log_weight_knn(z1, bank, 3),
        }

    with torch.autocast("cpu", dtype=torch.bfloat16):
        z1, z2 = layer(x1), layer(x2)
        assert z1.dtype == torch.bfloat16
        low = compute(z1, z2)
    full = compute(layer(x1), layer(x2))
    for name, value in low.items():
        assert value.dtype == torch.float32, name
        assert torch.allclose(value, full[name], rtol=3e-2, atol=3e-2), name
