"""LDAM-DRW (Cao et al., NeurIPS 2019): label-distribution-aware margins, deferred
class-balanced weights, and the loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fassl.float32 import float32_only


def ldam_margins(class_counts: Tensor, max_margin: float) -> Tensor:
    """LDAM's per-class margins (Cao et al., NeurIPS 2019, "label-distribution-aware
    margin"): Delta_j = C / n_j^(1/4),
    with C chosen so that the largest margin (the rarest class's) is ``max_margin``.

    Args:
        class_counts: (C,) training images per class, each >= 1.
        max_margin: the rarest class's margin (0.5 in LDAM's code).

    Returns:
        (C,) float32 margins.
    """
    counts = class_counts.float()
    if counts.dim() != 1 or bool((counts < 1).any()):
        raise ValueError(f"class_counts must be (C,) counts >= 1, got {class_counts.tolist()}")
    inv = counts.pow(-0.25)
    return inv * (max_margin / inv.max())


def drw_class_weights(class_counts: Tensor, beta: float) -> Tensor:
    """Deferred re-weighting's class weights (Cao et al., NeurIPS 2019, DRW): the
    class-balanced weights of Cui et al. (CVPR 2019), (1 - beta) / (1 - beta^n_j),
    scaled to sum to the number of classes. ``beta`` = 0 gives all 1 (before the switch).

    Args:
        class_counts: (C,) training images per class, each >= 1.
        beta: in [0, 1) (0.9999 in LDAM-DRW).

    Returns:
        (C,) float32 weights summing to C.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    counts = class_counts.double()
    weights = (1.0 - beta) / (1.0 - torch.pow(beta, counts))
    return (weights / weights.sum() * counts.numel()).float()


@float32_only
def ldam_loss(
    cosines: Tensor,
    targets: Tensor,
    margins: Tensor,
    scale: float,
    class_weights: Tensor | None = None,
) -> Tensor:
    """LDAM loss (Cao et al., NeurIPS 2019, as in their code): cross-entropy of ``scale`` times the
    logits, the true class's logit lowered by its margin first.

    ``cross_entropy(scale * (cos - Delta_y 1[j = y]), y)``, weighted per class by
    ``class_weights`` (DRW) as ``F.cross_entropy`` weights: a weighted mean.

    Args:
        cosines: (B, C) logits of a cosine classifier (LDAM's normalised linear layer).
        targets: (B,) class indices.
        margins: (C,) per-class margins (``ldam_margins``).
        scale: s (30 in LDAM's code).
        class_weights: (C,) per-class weights (``drw_class_weights``); None = all 1.

    Returns:
        Scalar float32 loss.
    """
    cosines = cosines.float()
    shift = F.one_hot(targets, cosines.shape[1]).to(cosines.dtype) * margins.float()[targets, None]
    weight = None if class_weights is None else class_weights.float().to(cosines.device)
    return F.cross_entropy(scale * (cosines - shift), targets, weight=weight)
