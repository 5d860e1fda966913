"""Optimizers and the learning-rate schedule shared by every method."""

from __future__ import annotations

import math

import torch
from torch import nn

from fassl.config import OptimConfig


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices and conv kernels only: biases, BatchNorm parameters
    and prototype-free 1-d parameters are excluded (and LARS does not adapt them)."""
    decay, no_decay = [], []
    for p in module.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars": True},
        {"params": no_decay, "weight_decay": 0.0, "lars": False},
    ]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (You et al., 2017).

    PyTorch ships no LARS; this is the usual SimCLR/BYOL form: for parameter groups with
    ``lars=True`` the gradient (weight decay added) g is scaled by eta * |w| / |g|; with
    ``clip_lr`` that ratio is divided by the step's lr and capped at 1, as solo-learn's
    LARS with ``clip_lr`` (solo/utils/lars.py), so no step exceeds SGD's.
    """

    def __init__(
        self,
        params: list[dict],
        lr: float,
        momentum: float = 0.9,
        eta: float = 0.001,
        clip_lr: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, eta=eta, weight_decay=0.0, lars=True, clip_lr=clip_lr
        )
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        # a checkpoint from before clip_lr existed: its groups load without the key
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("clip_lr", False)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._group_step(group, params)

    def _group_step(self, group: dict, params: list[torch.Tensor]) -> None:
        """One group's update with multi-tensor (foreach) kernels: a few launches per
        group instead of several per parameter, the same arithmetic as the textbook loop
        (``tests/test_optim.py`` compares the two)."""
        grads = [p.grad for p in params]
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        if group["lars"]:
            w_norm = torch.stack(torch._foreach_norm(params))
            g_norm = torch.stack(torch._foreach_norm(grads))
            ratio = group["eta"] * w_norm / g_norm
            if group["clip_lr"]:  # lr 0 (a warm-up's first step): inf, capped at 1
                ratio = (ratio / group["lr"]).clamp(max=1.0)
            # masked_fill takes the 1.0 as a kernel argument: no scalar tensor on the device
            trust = ratio.masked_fill(~((w_norm > 0) & (g_norm > 0)), 1.0)
            grads = torch._foreach_mul(grads, list(trust.unbind()))
        bufs = [self.state[p].get("momentum_buffer") for p in params]
        if any(b is None for b in bufs):
            for p, g in zip(params, grads, strict=True):
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = g.clone()
                else:
                    buf = self.state[p]["momentum_buffer"]
                    buf.mul_(group["momentum"]).add_(g)
        else:
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, grads)
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        torch._foreach_add_(params, bufs, alpha=-group["lr"])


def build_optimizer(module: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD, LARS or AdamW over ``param_groups``, each with multi-tensor (foreach) kernels.

    Not ``SGD(fused=True)``: it fails (torch 2.13) when one parameter gets its first
    gradient after the others have momentum, as SwAV's frozen prototypes do. AdamW's
    weight decay is decoupled (``weight_decay`` multiplies lr x w), its betas are
    ``momentum`` and ``adam_beta2``.
    """
    groups = param_groups(module, cfg.weight_decay)
    if cfg.optimizer == "lars":
        return LARS(
            groups, lr=cfg.lr, momentum=cfg.momentum, eta=cfg.lars_eta, clip_lr=cfg.lars_clip_lr
        )
    for g in groups:
        g.pop("lars")
    if cfg.optimizer == "adamw":
        betas = (cfg.momentum, cfg.adam_beta2)
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, foreach=True)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, foreach=True)


def lr_at(
    step: int, total_steps: int, warmup_steps: int, base_lr: float, min_ratio: float = 0.0
) -> float:
    """Linear warm-up to ``base_lr`` over ``warmup_steps``, then cosine decay to
    ``base_lr * min_ratio`` at ``total_steps``; evaluated per step."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
