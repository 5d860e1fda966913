import copy
import math

import pytest
import torch

from fassl.config import OptimConfig
from fassl.train.optim import LARS, build_optimizer, lr_at, param_groups


def test_schedule_warmup_and_cosine():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    # halfway through the cosine part: (1 + cos(pi/2)) / 2 = 0.5
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(100, 100, 10, 2.0, min_ratio=0.1) == pytest.approx(0.2)
    mid = lr_at(32, 100, 10, 1.0)
    assert mid == pytest.approx(0.5 * (1 + math.cos(math.pi * 22 / 90)))


def test_no_weight_decay_on_biases_and_norms():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    decay, no_decay = param_groups(net, 1e-4)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


def test_lars_trust_ratio_on_hand_values():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # |w| = 5
    w.grad = torch.tensor([0.0, 2.0])  # |g| = 2
    opt = LARS([{"params": [w], "weight_decay": 0.0, "lars": True}], lr=1.0, eta=0.1)
    opt.step()
    # update = lr * eta * |w| / |g| * g = 0.25 * [0, 2]
    assert torch.allclose(w.detach(), torch.tensor([3.0, 3.5]))


def test_build_sgd_lars_and_adamw():
    net = torch.nn.Linear(2, 2)
    assert isinstance(build_optimizer(net, OptimConfig(optimizer="sgd")), torch.optim.SGD)
    assert isinstance(build_optimizer(net, OptimConfig(optimizer="lars")), LARS)
    adamw = build_optimizer(net, OptimConfig(optimizer="adamw", momentum=0.8, adam_beta2=0.95))
    assert isinstance(adamw, torch.optim.AdamW)
    assert [g["betas"] for g in adamw.param_groups] == [(0.8, 0.95)] * 2


def test_adamw_first_step_on_hand_values():
    # Step 1 with bias correction: m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps)
    # = lr * sign(g); the decay is decoupled: w <- w (1 - lr wd) first, and only on the
    # weight matrix (the bias is in the no-decay group).
    net = torch.nn.Linear(1, 1)
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.bias.fill_(1.0)
    opt = build_optimizer(net, OptimConfig(optimizer="adamw", lr=0.1, weight_decay=0.5))
    net.weight.grad = torch.tensor([[0.5]])
    net.bias.grad = torch.tensor([-2.0])
    opt.step()
    assert net.weight.item() == pytest.approx(1.0 * (1 - 0.1 * 0.5) - 0.1, abs=1e-6)
    assert net.bias.item() == pytest.approx(1.0 + 0.1, abs=1e-6)


def textbook_lars_step(params, grads, bufs, lr, momentum, eta, wd, lars):
    """LARS one parameter at a time, as the paper writes it."""
    for p, g, name in zip(params, grads, range(len(params)), strict=True):
        g = g + wd * p
        if lars:
            w_norm, g_norm = p.norm(), g.norm()
            if w_norm > 0 and g_norm > 0:
                g = g * (eta * w_norm / g_norm)
        bufs[name] = g.clone() if name not in bufs else bufs[name] * momentum + g
        p -= lr * bufs[name]


def test_lars_matches_textbook_loop_over_steps():
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (5,), (2, 2, 3)]
    ref = [torch.randn(s, generator=g) for s in shapes]
    ref[1].zero_()  # a zero weight: trust ratio 1
    params = [torch.nn.Parameter(r.clone()) for r in ref]
    groups = [
        {"params": [params[0], params[2]], "weight_decay": 0.01, "lars": True},
        {"params": [params[1]], "weight_decay": 0.0, "lars": False},
    ]
    opt = LARS(groups, lr=0.3, momentum=0.9, eta=0.02)
    bufs_a: dict = {}
    bufs_b: dict = {}
    for _ in range(3):
        grads = [torch.randn(s, generator=g) for s in shapes]
        for p, gr in zip(params, grads, strict=True):
            p.grad = gr.clone()
        opt.step()
        hp = {"lr": 0.3, "momentum": 0.9, "eta": 0.02}
        textbook_lars_step([ref[0], ref[2]], [grads[0], grads[2]], bufs_a, **hp, wd=0.01, lars=True)
        textbook_lars_step([ref[1]], [grads[1]], bufs_b, **hp, wd=0.0, lars=False)
    for p, r in zip(params, ref, strict=True):
        assert torch.allclose(p.detach(), r, atol=1e-6)


def test_sgd_uses_multi_tensor_kernels_and_skips_late_gradients():
    net = torch.nn.Linear(3, 2)
    opt = build_optimizer(net, OptimConfig(optimizer="sgd", lr=0.1, weight_decay=0.0))
    assert opt.defaults["foreach"] is True
    net.weight.grad, net.bias.grad = torch.ones(2, 3), None  # bias frozen this step
    opt.step()
    net.weight.grad, net.bias.grad = torch.ones(2, 3), torch.ones(2)
    bias = net.bias.detach().clone()
    opt.step()  # the bias's first momentum step comes after the weight's
    assert torch.allclose(net.bias.detach(), bias - 0.1)


def solo_learn_lars_step(params, lr, momentum, eta, wd, clip, state, eps=1e-8):
    """solo-learn's LARS step (vturrisi/solo-learn @ 096530c, solo/utils/lars.py,
    ``LARS.step`` with ``exclude_bias_n_norm_lars=True``, no dampening or Nesterov),
    one parameter at a time."""
    for p in params:
        d_p = p.grad
        p_norm, g_norm = torch.norm(p.data), torch.norm(p.grad.data)
        if p.ndim != 1 and p_norm != 0 and g_norm != 0:
            lars_lr = p_norm / (g_norm + p_norm * wd + eps) * eta
            if clip:
                lars_lr = min(lars_lr / lr, 1)
            d_p = d_p.add(p, alpha=wd) * lars_lr
        if id(p) not in state:
            state[id(p)] = torch.clone(d_p).detach()
        else:
            state[id(p)].mul_(momentum).add_(d_p)
        p.data.add_(state[id(p)], alpha=-lr)


@pytest.mark.parametrize("wd", [0.0, 1e-6])
def test_clipped_lars_is_solo_learns_over_a_schedule(wd) -> None:
    """``optim.lars_clip_lr``: solo-learn's clipped trust ratio, step for step while the
    learning rate changes (warm-up from 0, then large enough that the clip binds for some
    parameters and not others); the ratio's denominator is |g + wd w| here and |g| + wd |w|
    there, equal at wd 0 and within 1e-5 at solo-learn's CIFAR 1e-6."""
    g = torch.Generator().manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    ref = copy.deepcopy(net)
    cfg = OptimConfig(optimizer="lars", lars_eta=0.02, lars_clip_lr=True, weight_decay=wd)
    opt = build_optimizer(net, cfg)
    state: dict = {}
    for lr in (0.0, 0.05, 0.3, 2.0):
        # gradients of several scales: the clip binds for some parameters, not others
        scales = (1e-3, 1.0, 10.0, 0.1)
        grads = [
            torch.randn(p.shape, generator=g) * s
            for p, s in zip(net.parameters(), scales, strict=True)
        ]
        for group in opt.param_groups:
            group["lr"] = lr
        for p, r, gr in zip(net.parameters(), ref.parameters(), grads, strict=True):
            p.grad, r.grad = gr.clone(), gr.clone()
        opt.step()
        solo_learn_lars_step(list(ref.parameters()), lr, 0.9, 0.02, wd, True, state)
    tol = 1e-6 if wd == 0 else 1e-5
    for p, r in zip(net.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(p, r, atol=tol, rtol=tol)
    # the unclipped default takes other steps from the same start
    plain = build_optimizer(copy.deepcopy(ref), OptimConfig(optimizer="lars", lars_eta=0.02))
    assert plain.param_groups[0]["clip_lr"] is False


def test_lars_resumes_groups_saved_before_clip_lr() -> None:
    """An optimizer state written before ``clip_lr`` existed loads and steps unclipped."""
    net = torch.nn.Linear(3, 2)
    opt = build_optimizer(net, OptimConfig(optimizer="lars"))
    state = opt.state_dict()
    for group in state["param_groups"]:
        del group["clip_lr"]
    opt.load_state_dict(state)
    net.weight.grad = torch.ones_like(net.weight)
    opt.step()
    assert opt.param_groups[0]["clip_lr"] is False
