"""Loss functions of FASSL and its baselines (SimCLR, SDCLR, BYOL, SwAV, BCL, LDAM-DRW).

Every function is pure: no module state. Inputs are cast to float32 and autocast is
switched off inside (``fassl.float32.float32_only``: autocast would run the matmuls in
bf16 again), so callers running under bf16 autocast get float32 losses, softmaxes and
weights.
Equation numbers refer to the FASSL paper (Lin, Chen, Wang, "Frequency-Aware
Self-Supervised Long-Tailed Learning", ICCV 2023 workshops).

Distributed training: ``nt_xent`` (and so ``prototype_contrastive_loss``) uses the
negatives of the global batch; ``normalize_weights`` and ``sinkhorn`` can use global
batch statistics. All of them assume every rank holds the same local batch size
(``all_gather`` needs equal shapes). In a single process they reduce to the usual
single-device formulas.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from fassl import distributed
from fassl.float32 import float32_only

__all__ = [
    "byol_loss",
    "consistency_loss",
    "drw_class_weights",
    "ldam_loss",
    "ldam_margins",
    "log_rebalance_weight",
    "normalize_weights",
    "nt_xent",
    "nt_xent_per_image",
    "prototype_contrastive_loss",
    "prototype_scores",
    "sinkhorn",
    "swav_loss",
]


# --------------------------------------------------------------------------- contrastive


def _nt_xent_logits(z1: Tensor, z2: Tensor, temperature: float | Tensor) -> tuple[Tensor, Tensor]:
    """(2n, 2N) logits of this rank's anchors against the global batch, and each anchor's
    positive column: what ``nt_xent`` and ``nt_xent_per_image`` reduce."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(
            f"nt_xent needs two (n, D) tensors, got {tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    n = z1.shape[0]
    z1 = F.normalize(z1.float(), dim=1)
    z2 = F.normalize(z2.float(), dim=1)
    all1 = distributed.gather_with_grad(z1)
    all2 = distributed.gather_with_grad(z2)
    total = all1.shape[0]  # N, the global number of images
    offset = distributed.rank() * n

    anchors = torch.cat([z1, z2], dim=0)  # (2n, D)
    candidates = torch.cat([all1, all2], dim=0)  # (2N, D): view 1 block, then view 2
    logits = anchors @ candidates.T / temperature

    local = torch.arange(n, device=z1.device)
    self_idx = torch.cat([offset + local, total + offset + local])
    pos_idx = torch.cat([total + offset + local, offset + local])
    rows = torch.arange(2 * n, device=z1.device)
    # An anchor is never its own candidate: exp(-inf) = 0 drops it from the softmax. The
    # -inf is filled on the device (new_full), not copied from the host.
    logits = logits.index_put((rows, self_idx), logits.new_full((), float("-inf")))
    return logits, pos_idx


@float32_only
def nt_xent(z1: Tensor, z2: Tensor, temperature: float | Tensor) -> Tensor:
    """NT-Xent of SimCLR (Chen et al., ICML 2020, Eq. 1), mean over this rank's anchors.

    Rows are L2-normalised, so similarities are cosines divided by ``temperature``.
    Anchors are this rank's 2n views (both ``z1`` and ``z2``, n rows each); the
    candidates are all 2N views of the global batch gathered from every rank
    (``gather_with_grad``), the anchor itself excluded. The positive of a view is
    the other view of the same image; the other 2N - 2 views are negatives.

    With equal local batches the mean over ranks of this loss is the full-batch loss,
    and the gather's backward makes DDP's gradient average the gradient of that mean.

    Args:
        z1: (n, D) first views of this rank's images.
        z2: (n, D) second views, row i pairs with row i of ``z1``.
        temperature: softmax temperature (0.2 in SDCLR's setup); a 0-d tensor for a
            scheduled temperature (``fassl.methods.temperature``).

    Returns:
        Scalar float32 loss.
    """
    logits, pos_idx = _nt_xent_logits(z1, z2, temperature)
    return F.cross_entropy(logits, pos_idx)


@float32_only
def nt_xent_per_image(z1: Tensor, z2: Tensor, temperature: float | Tensor) -> Tensor:
    """NT-Xent of each image: the mean of its two views' anchor losses, (n,).

    BCL (Zhou et al., ICML 2022, Sec. 4.1) tracks this per-image loss; its mean over the
    batch is ``nt_xent``. Same arguments as ``nt_xent``.

    Returns:
        (n,) float32 losses, carrying the gradient.
    """
    logits, pos_idx = _nt_xent_logits(z1, z2, temperature)
    per_anchor = F.cross_entropy(logits, pos_idx, reduction="none")
    return per_anchor.view(2, -1).mean(dim=0)


@float32_only
def prototype_scores(z: Tensor, prototypes: Tensor, normalize: bool) -> Tensor:
    """Similarity of each embedding to each prototype, h = P z (Eq. 1 of the FASSL paper).

    Args:
        z: (N, D) embeddings.
        prototypes: (K, D) prototype matrix P, one prototype per row.
        normalize: L2-normalise the rows of ``z`` and ``P`` first (cosine scores in
            [-1, 1]); False is the paper's raw inner product.

    Returns:
        (N, K) float32 scores h.
    """
    z = z.float()
    prototypes = prototypes.float()
    if normalize:
        z = F.normalize(z, dim=1)
        prototypes = F.normalize(prototypes, dim=1)
    return z @ prototypes.T


@float32_only
def prototype_contrastive_loss(
    z1: Tensor, z2: Tensor, prototypes: Tensor, temperature: float, normalize: bool
) -> Tensor:
    """L_contra of Eq. 2 of the FASSL paper: NT-Xent on the prototype scores h = P z.

    The cosine similarity of Eq. 2 is taken between score vectors h (K-dim), with
    temperature beta. Gradients reach both the embeddings and the prototypes.

    Args:
        z1: (n, D) teacher embeddings of the first views.
        z2: (n, D) teacher embeddings of the second views.
        prototypes: (K, D) prototype matrix P.
        temperature: beta (0.2 in the paper).
        normalize: L2-normalise z and P before Eq. 1, see ``prototype_scores``.

    Returns:
        Scalar float32 loss.
    """
    h1 = prototype_scores(z1, prototypes, normalize)
    h2 = prototype_scores(z2, prototypes, normalize)
    return nt_xent(h1, h2, temperature)


# ------------------------------------------------------------------------ re-weighting
# log phi follows one contract: larger = rarer, in log space, detached (phi carries no
# gradient). Eq. 3 is here; its label-free variants live in fassl.reweight.


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


# ---------------------------------------------------------------------- BYOL / Eq. 3


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


# ------------------------------------------------------------------------------ SwAV


def _logsumexp_over_batch(log_q: Tensor, valid: Tensor | None = None) -> Tensor:
    """logsumexp over dim 0 of the global batch: (1, K), identical on every rank; rows
    where ``valid`` (B,) is False count as absent (exp(-inf) = 0)."""
    if valid is not None:
        log_q = log_q.masked_fill(~valid.view(-1, 1), float("-inf"))
    if not distributed.is_distributed() or distributed.world_size() == 1:
        return torch.logsumexp(log_q, dim=0, keepdim=True)
    top = log_q.max(dim=0, keepdim=True).values
    dist.all_reduce(top, op=dist.ReduceOp.MAX)
    total = torch.exp(log_q - top).sum(dim=0, keepdim=True)
    dist.all_reduce(total)
    return torch.log(total) + top


@float32_only
@torch.no_grad()
def sinkhorn(
    scores: Tensor, epsilon: float, iterations: int, valid: Tensor | None = None
) -> Tensor:
    """Sinkhorn-Knopp codes of SwAV (Caron et al., NeurIPS 2020, Sec. 3.1 and Alg. 1).

    Solves the entropic equipartition problem for Q proportional to
    ``exp(scores / epsilon)``: every sample's codes sum to 1 and every prototype gets
    B/K of the batch's mass (B = global batch size). Computed in float32 in log space
    (each normalisation subtracts a logsumexp), so no exp can overflow or make a column
    vanish, even for bf16 scores of +-1e4 with epsilon 0.01.

    Each iteration first normalises the prototype columns (each column sums to B/K,
    over the global batch under distributed training, via all_reduce), then the sample
    rows. The last operation is therefore the row normalisation: **row sums are exactly
    1** after the last iteration, **column sums equal B/K only approximately**, the gap
    shrinking with more iterations (SwAV's order and its final ``Q *= B``). With
    ``iterations`` = 0 the codes are the row softmax of ``scores / epsilon``.

    The codes are targets, so no gradient flows through them.

    ``valid`` leaves rows out as if they were not there (SwAV's partly filled queue): B
    counts the valid rows, the columns sum over them only, and the left-out rows get
    codes 0. A mask rather than a slice keeps the shapes fixed, so a compiled step
    neither reads the count on the host nor recompiles as the queue fills.

    Args:
        scores: (B, K) prototype scores of this rank's samples.
        epsilon: entropy regularisation (0.05 in SwAV).
        iterations: Sinkhorn iterations (3 in SwAV).
        valid: (B,) bool, the rows that take part; None = all of them.

    Returns:
        (B, K) float32 codes Q.
    """
    log_q = scores.float() / epsilon
    num_protos = log_q.shape[1]
    world = distributed.world_size()
    log_col_target: float | Tensor
    if valid is None:
        log_col_target = math.log(log_q.shape[0] * world / num_protos)
    else:  # on the device: the number of valid rows is never read on the host
        log_col_target = torch.log(valid.sum(dtype=torch.float64) * (world / num_protos)).float()
    for _ in range(iterations):
        log_q = log_q - _logsumexp_over_batch(log_q, valid) + log_col_target
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
    if iterations == 0:
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
    codes = torch.exp(log_q)
    return codes if valid is None else codes.masked_fill(~valid.view(-1, 1), 0.0)


@float32_only
def swav_loss(
    scores1: Tensor, scores2: Tensor, codes1: Tensor, codes2: Tensor, temperature: float
) -> Tensor:
    """Swapped prediction loss of SwAV (Caron et al., NeurIPS 2020, Eq. 1-2).

    ``0.5 * [ -mean_b sum_k codes2 * log_softmax(scores1 / t)
              -mean_b sum_k codes1 * log_softmax(scores2 / t) ]``:
    each view predicts the other view's codes. The halving is SwAV's normalisation
    for two crops both used for assignment (sum over the crops of the other crops'
    losses, divided by (crops - 1) and by the number of assigned crops), so the loss
    is on the scale of one cross-entropy.

    Args:
        scores1: (B, K) prototype scores of view 1 (cosines, carry the gradient).
        scores2: (B, K) prototype scores of view 2.
        codes1: (B, K) Sinkhorn codes of view 1 (detached here).
        codes2: (B, K) Sinkhorn codes of view 2.
        temperature: softmax temperature t (0.1 in SwAV).

    Returns:
        Scalar float32 loss.
    """
    log_p1 = F.log_softmax(scores1.float() / temperature, dim=1)
    log_p2 = F.log_softmax(scores2.float() / temperature, dim=1)
    loss12 = -(codes2.detach().float() * log_p1).sum(dim=1).mean()
    loss21 = -(codes1.detach().float() * log_p2).sum(dim=1).mean()
    return 0.5 * (loss12 + loss21)


# ---------------------------------------------------------------------------- LDAM-DRW


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
