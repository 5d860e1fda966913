"""BYOL's consistency loss, weighted (FASSL's stage 2, Eq. 3) or not (BYOL itself)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from fassl.float32 import float32_only


@float32_only
def consistency_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Normalised MSE of Eq. 3 of the FASSL paper (and of BYOL, Grill et al. 2020).

    Per sample ``|| p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z)``; the target is detached
    (stop-gradient). The batch reduction is ``mean_i(weight_i * loss_i)``, the
    expectation of Eq. 3: with weights that average 1 (``normalize_weights``) this is
    also the weighted average, and with global-batch weights the mean over ranks is the
    global L_reb.

    Args:
        pred: (n, D) student predictions q(z^S).
        target: (n, D) teacher embeddings z^T.
        weight: (n,) per-sample weights phi (detached); None means all 1.

    Returns:
        Scalar float32 loss.
    """
    p = F.normalize(pred.float(), dim=1)
    z = F.normalize(target.detach().float(), dim=1)
    per_sample = (p - z).pow(2).sum(dim=1)
    if weight is not None:
        per_sample = per_sample * weight.detach().float()
    return per_sample.mean()


@float32_only
def byol_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """BYOL's symmetrised loss (Grill et al., NeurIPS 2020, Eq. 2-3).

    ``consistency(p1, sg(z2)) + consistency(p2, sg(z1))``: each view's prediction
    regresses the teacher embedding of the other view, each term a batch mean of
    ``2 - 2 cos``. So the loss lies in [0, 8].

    Args:
        p1: (n, D) student predictions of view 1.
        p2: (n, D) student predictions of view 2.
        z1: (n, D) teacher embeddings of view 1.
        z2: (n, D) teacher embeddings of view 2.

    Returns:
        Scalar float32 loss.
    """
    return consistency_loss(p1, z2) + consistency_loss(p2, z1)
