"""SwAV's Sinkhorn-Knopp codes and swapped-prediction loss (Caron et al., NeurIPS 2020)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from fassl import distributed
from fassl.float32 import float32_only


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


@float32_only
def swav_multicrop_loss(scores: list[Tensor], codes: list[Tensor], temperature: float) -> Tensor:
    """SwAV's swapped prediction over multi-crop (``main_swav.py``'s ``train``): the codes
    of each assigned crop (``crops_for_assign``: the first ``len(codes)`` views, the
    global crops) are predicted from every other crop.

    ``mean_i [ sum_{v != i} -mean_b sum_k codes_i * log_softmax(scores_v / t) ] / (V - 1)``
    over the assigned crops i and all V crops. With two crops, both assigned, it is
    ``swav_loss``.

    Args:
        scores: V tensors (B, K), the prototype scores of every crop, assigned ones first.
        codes: A tensors (B, K), the Sinkhorn codes of the first A crops (detached here).
        temperature: softmax temperature t (0.1 in SwAV).

    Returns:
        Scalar float32 loss.
    """
    if not codes or len(scores) < 2 or len(codes) > len(scores):
        raise ValueError(
            f"SwAV needs at least 2 crops and 1 to {len(scores)} assigned ones, got "
            f"{len(scores)} crops and {len(codes)} codes"
        )
    log_p = [F.log_softmax(s.float() / temperature, dim=1) for s in scores]
    loss = scores[0].new_zeros((), dtype=torch.float32)
    for i, q in enumerate(codes):
        q = q.detach().float()
        sub = scores[0].new_zeros((), dtype=torch.float32)
        for v, lp in enumerate(log_p):
            if v != i:
                sub = sub - (q * lp).sum(dim=1).mean()
        loss = loss + sub / (len(scores) - 1)
    return loss / len(codes)
