"""SDCLR's pruned branch: global magnitude masks over conv weights and its own BatchNorms.

SDCLR (Jiang et al., ICML 2021) contrasts the dense network with a copy whose smallest
conv weights are zeroed; the copy shares the remaining weights but normalises with BN
layers of its own. Here the copy is not a second module: the pruned forward calls the
same module with masked weights (``torch.func.functional_call``) while every
``DualBatchNorm`` routes to its pruned twin, so gradients of both branches reach the one
set of weights.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class DualBatchNorm(nn.Module):
    """A BatchNorm layer for the dense branch and a twin for the pruned branch."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.dense = bn
        self.pruned = copy.deepcopy(bn)
        self.use_pruned = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pruned(x) if self.use_pruned else self.dense(x)


def add_pruned_batchnorms(module: nn.Module) -> nn.Module:
    """Replace, in place, every BatchNorm of ``module`` by a DualBatchNorm."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, DualBatchNorm(child))
        else:
            add_pruned_batchnorms(child)
    return module


@contextmanager
def pruned_batchnorms(module: nn.Module) -> Iterator[None]:
    """Route every DualBatchNorm of ``module`` to its pruned twin inside the block."""
    duals = [m for m in module.modules() if isinstance(m, DualBatchNorm)]
    for m in duals:
        m.use_pruned = True
    try:
        yield
    finally:
        for m in duals:
            m.use_pruned = False


def dense_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The dense branch of a state dict with DualBatchNorms, as a plain network's state."""
    out = {}
    for key, value in state.items():
        if ".pruned." in f".{key}":
            continue
        out[key.replace(".dense.", ".").removeprefix("dense.")] = value
    return out


def conv_weight_names(module: nn.Module) -> list[str]:
    return [f"{name}.weight" for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]


def pruned_count(total: int, prune_ratio: float) -> int:
    """How many of ``total`` weights SDCLR prunes: ceil(ratio * total) in float64, at most
    total - 1 (VITA-Group/SDCLR ``prune/mask.py``: the threshold is the sorted magnitude at
    that index, clipped to the last one)."""
    return min(math.ceil(prune_ratio * total), total - 1) if total else 0


@torch.no_grad()
def global_magnitude_masks(
    weights: dict[str, torch.Tensor], prune_ratio: float
) -> dict[str, torch.Tensor]:
    """Masks keeping the largest-magnitude ``1 - prune_ratio`` share of all weights jointly.

    ``pruned_count`` entries are zeroed over all tensors together (one global threshold),
    as in SDCLR's global magnitude pruning (``Mask.magnitudePruning``). SDCLR
    re-prunes every epoch, so this stays on the weights' device without a host
    synchronisation. ``topk`` measured faster than ``kthvalue`` plus tie handling on
    11.2M conv weights (width 64, CPU); one ``abs_`` over the concatenation instead of
    one per tensor saves more than the selection choice does.
    """
    if not 0 <= prune_ratio < 1:
        raise ValueError(f"prune_ratio must be in [0, 1), got {prune_ratio}")
    flat = torch.cat([w.detach().flatten() for w in weights.values()]).float().abs_()
    keep = flat.numel() - pruned_count(flat.numel(), prune_ratio)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.topk(flat, keep, sorted=False).indices] = True
    out, start = {}, 0
    for name, w in weights.items():
        out[name] = mask[start : start + w.numel()].view_as(w)
        start += w.numel()
    return out
