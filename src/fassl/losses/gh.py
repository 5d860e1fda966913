"""Geometric Harmonization (Zhou et al., "Combating Representation Learning Disparity with
Geometric Harmonization", NeurIPS 2023): a fixed simplex of K target directions, each
image's scores against them, Sinkhorn codes under a prior over the targets, and the
swapped cross-entropy between the two views' codes and scores.

As the reference code (MediaBrain-SJTU/Geometric-Harmonization @ 868a836, ``utils.py``
``GHLoss`` / ``sinkhorn``, ``target/gen_target.py``) computes them: the Sinkhorn scales
``exp(scores / epsilon)`` directly (not in log space), in the scores' dtype, so that on
the reference's float32 inputs the codes are the reference's. The scores are unit
vectors, so ``exp(1 / epsilon)`` bounds every entry: finite in float32 for epsilon above
1/88 (the default 0.05 gives at most e^20).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from fassl import distributed
from fassl.float32 import float32_only


def simplex_etf(gaussian: Tensor) -> Tensor:
    """gen_target.py's ``simplex_equiangular_tight_frame`` from its Gaussian draw:
    M = sqrt(K / (K - 1)) (I - 11^T / K) U, U the polar factor of the (K, d) draw (its
    rows orthonormal for K <= d). The rows of M are unit vectors whose pairwise cosines
    are all -1 / (K - 1), and they sum to zero.

    Args:
        gaussian: (K, d) float64, K <= d, K >= 2.

    Returns:
        (K, d) float64 targets.
    """
    k, d = gaussian.shape
    if not 2 <= k <= d:
        raise ValueError(f"a simplex of K={k} targets needs 2 <= K <= d={d}")
    w, _, vh = torch.linalg.svd(gaussian, full_matrices=False)
    polar = w @ vh  # scipy.linalg.polar's u: the SVD's W V^H
    centre = torch.eye(k, dtype=gaussian.dtype) - torch.full((k, k), 1.0 / k, dtype=gaussian.dtype)
    return math.sqrt(k / (k - 1)) * centre @ polar


def simplex_targets(num_targets: int, dim: int, seed: int) -> Tensor:
    """The K = ``num_targets`` geometrically uniform directions of GH in R^``dim``:
    ``simplex_etf`` of a standard normal (K, d) draw from a generator seeded with
    ``seed`` (gen_target.py draws it unseeded and saves the file). Float64."""
    g = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(num_targets, dim, generator=g, dtype=torch.float64)
    return simplex_etf(gaussian)


@float32_only
def gh_scores(z: Tensor, targets: Tensor) -> Tensor:
    """Each image's scores against the targets, as GH's code computes them:
    normalize(z T^T) over the K targets (so z's own norm does not matter).

    Args:
        z: (n, d) projections.
        targets: (K, d) target directions.

    Returns:
        (n, K) unit rows, in float32 (float64 for float64 inputs).
    """
    dtype = torch.promote_types(z.dtype, torch.float32)
    return F.normalize(z.to(dtype) @ targets.to(dtype).T, dim=1)


@float32_only
@torch.no_grad()
def gh_sinkhorn(scores: Tensor, prior: Tensor, epsilon: float, iterations: int) -> Tensor:
    """GH's Sinkhorn-Knopp surrogate labels (the reference's ``sinkhorn`` with ``stat``).

    Q = exp(scores / epsilon)^T (K, N) is scaled alternately: r = pi / (Q c), then
    c = (1/N) / (Q^T r), ``iterations`` times, from c = 1/N; the codes are
    N (r Q c^T)^T. The last scaling is the samples', so **each row of the codes sums to
    exactly 1** and target k's column sums to N pi_k only approximately. ``prior`` is
    normalised to sum to 1; a target with prior 0 gets no mass. N is the global batch:
    under distributed training Q c sums over every rank's samples (all_reduce), so the
    codes are those of the gathered batch. No gradient flows through the codes.

    Args:
        scores: (n, K) this rank's scores (``gh_scores``).
        prior: (K,) non-negative, not all zero: the share of images each target should
            take (pi; uniform = SwAV's equipartition).
        epsilon: entropy regularisation (0.05 in GH).
        iterations: scaling rounds, >= 1 (300 in GH).

    Returns:
        (n, K) codes, in the scores' dtype (at least float32).
    """
    if iterations < 1:
        raise ValueError(f"gh_sinkhorn needs iterations >= 1, got {iterations}")
    dtype = torch.promote_types(scores.dtype, torch.float32)
    q = torch.exp(scores.to(dtype) / epsilon).t()  # (K, n), as the reference
    num_targets, n = q.shape
    if prior.shape != (num_targets,):
        raise ValueError(f"prior must have shape ({num_targets},), got {tuple(prior.shape)}")
    world = distributed.world_size() if distributed.is_distributed() else 1
    total = n * world
    c = torch.ones((n, 1), dtype=dtype, device=q.device) / total
    inv_k = prior.detach().reshape(num_targets, 1).to(dtype)
    inv_k = inv_k / torch.sum(inv_k)
    inv_n = 1.0 / total
    r = torch.ones((num_targets, 1), dtype=dtype, device=q.device) / num_targets
    for _ in range(iterations):
        mass = q @ c
        if world > 1:
            dist.all_reduce(mass)
        r = inv_k / mass
        c = inv_n / (q.T @ r)
    codes = r * q * c.t()
    codes = codes.t()
    return codes * total


@float32_only
def gh_loss(
    scores1: Tensor,
    scores2: Tensor,
    prior: Tensor,
    gamma: float,
    epsilon: float,
    iterations: int,
) -> Tensor:
    """GH's loss (the reference's ``GHLoss``): each view's Sinkhorn codes under ``prior``
    are the targets of the other view's softmax at temperature ``gamma``,

    ``-mean_i sum_k q1_ik log softmax(s2_i / gamma)_k
      -mean_i sum_k q2_ik log softmax(s1_i / gamma)_k``

    summed over both directions (not halved, as the reference). The mean is over this
    rank's images; with equal local batches DDP's gradient average is that of the
    global mean, and the codes are the global batch's (``gh_sinkhorn``).

    Args:
        scores1: (n, K) scores of view 1 (``gh_scores``; carry the gradient).
        scores2: (n, K) scores of view 2.
        prior: (K,) pi, the share of images per target.
        gamma: softmax temperature (0.1 in GH).
        epsilon: Sinkhorn's entropy regularisation (0.05).
        iterations: Sinkhorn's rounds (300).

    Returns:
        Scalar loss (float32; float64 for float64 scores).
    """
    q1 = gh_sinkhorn(scores1, prior, epsilon, iterations)
    q2 = gh_sinkhorn(scores2, prior, epsilon, iterations)
    dtype = q1.dtype
    log_p2 = F.log_softmax(scores2.to(dtype) / gamma, dim=1)
    log_p1 = F.log_softmax(scores1.to(dtype) / gamma, dim=1)
    return -torch.mean(torch.sum(q1 * log_p2, dim=1)) - torch.mean(torch.sum(q2 * log_p1, dim=1))


@torch.no_grad()
def target_prior(momentum: Tensor, seen: Tensor) -> Tensor:
    """GH's prior pi: the share of images whose momentum-averaged score is highest on each
    target (the reference's ``idxsNumPerClass / sum``), over the images seen so far;
    uniform while none is seen.

    Args:
        momentum: (N, K) momentum scores.
        seen: (N,) bool, the images that have a momentum score.

    Returns:
        (K,) float32, summing to 1 (some entries may be 0).
    """
    num_targets = momentum.shape[1]
    winners = momentum.argmax(dim=1)
    counts = torch.zeros(num_targets, device=momentum.device).index_add_(
        0, winners, seen.to(torch.float32)
    )
    total = counts.sum()
    uniform = torch.full_like(counts, 1.0 / num_targets)
    return torch.where(total > 0, counts / total.clamp_min(1.0), uniform)
