"""Eq. 3 of FASSL: log phi of an image against the prototypes, and its batch weights.

The weighted loss they scale is BYOL's consistency loss (``fassl.losses.consistency_loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fassl import distributed
from fassl.float32 import float32_only

# log phi follows one contract: larger = rarer, in log space, detached (phi carries no
# gradient). Eq. 3 is here; its label-free variants live in fassl.rebalance.reweighters.


@float32_only
@torch.no_grad()
def log_rebalance_weight(z: Tensor, prototypes: Tensor, normalize: bool) -> Tensor:
    """log phi of Eq. 3 of the FASSL paper: log phi_i = -sum_k <z_i, p_k>.

    The sum of inner products equals <z_i, sum_k p_k>, so one matrix-vector product
    suffices. Returned in log space: exp of the raw sum overflows float32 easily.

    Args:
        z: (N, D) teacher embeddings.
        prototypes: (K, D) frozen prototype matrix P.
        normalize: use unit-length z and p (the exponent then lies in [-K, K]);
            False is Eq. 3 as written.

    Returns:
        (N,) float32 log-weights, detached.
    """
    z = z.float()
    prototypes = prototypes.float()
    if normalize:
        z = F.normalize(z, dim=1)
        prototypes = F.normalize(prototypes, dim=1)
    return -(z @ prototypes.sum(dim=0))


@float32_only
@torch.no_grad()
def normalize_weights(
    log_phi: Tensor, clip_std: float, global_stats: bool, strength: float = 0.0
) -> Tensor:
    """Turn log-weights into batch weights: "clip outliers and normalize the weights in
    each mini-batch" (Sec. 4.2 of the FASSL paper).

    0. With ``strength`` > 0 (not in the paper): standardise log phi over the batch and
       scale it to std ``strength``. This keeps the ranking of the weight variant and
       fixes how far the weights spread, which otherwise depends on the variant's units:
       Eq. 3 as written spans orders of magnitude, the knn variant a few percent.
    1. Clip: clamp log phi to mean +- ``clip_std`` * std (population std) of the batch;
       ``clip_std`` = 0 disables clipping.
    2. Exponentiate after subtracting the batch maximum, so any finite input gives
       finite weights (the largest weight is exp(0) = 1 before scaling).
    3. Scale so the weights average exactly 1 over the batch, which keeps the loss on
       the scale of the unweighted (BYOL) loss.

    With ``global_stats`` and an initialised process group, the batch is the global
    batch (gathered from all ranks): every rank clips and scales with the same numbers
    and the weights average 1 over all ranks together. Otherwise the statistics are
    per process.

    Args:
        log_phi: (n,) log-weights of this rank's images.
        clip_std: clipping width in standard deviations; 0 = no clipping.
        global_stats: use the statistics of the global batch when distributed.
        strength: std of log phi after standardising; 0 = use log phi as given.

    Returns:
        (n,) float32 weights, ``requires_grad`` False.
    """
    log_phi = log_phi.detach().float()
    batch = distributed.gather_no_grad(log_phi) if global_stats else log_phi
    if strength > 0:
        # clamp: a constant batch (std 0) gives all-equal weights, not 0/0
        mean, std = batch.mean(), batch.std(correction=0).clamp_min(1e-12)
        log_phi = (log_phi - mean) / std * strength
        batch = (batch - mean) / std * strength
    if clip_std > 0:
        mean = batch.mean()
        std = batch.std(correction=0)
        low, high = mean - clip_std * std, mean + clip_std * std
        log_phi = log_phi.clamp(low, high)
        batch = batch.clamp(low, high)
    top = batch.max()
    weights = torch.exp(log_phi - top)
    return weights / torch.exp(batch - top).mean()
