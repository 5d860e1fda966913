"""DINO's self-distillation loss, its centre and its teacher temperature (Caron et al.,
"Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021).

The arithmetic of ``DINOLoss`` in facebookresearch/dino ``main_dino.py``, as pure
functions: the loss reads the centre, the caller keeps it (a buffer of the method) and
replaces it with ``update_center``'s result after each step.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from fassl import distributed
from fassl.float32 import float32_only


@float32_only
def dino_loss(
    student_out: list[Tensor],
    teacher_out: list[Tensor],
    center: Tensor,
    student_temp: float,
    teacher_temp: float,
) -> Tensor:
    """Cross-entropy of every student view against every teacher view but its own:
    ``dino_cross_entropy`` of the teacher's ``dino_targets``.

    Args:
        student_out: V tensors (B, K), the student's outputs of every view, globals first.
        teacher_out: G tensors (B, K), the teacher's outputs of the first G views
            (DINO: the 2 global crops).
        center: (1, K) or (K,), the running mean of the teacher's outputs.
        student_temp: the student's temperature (0.1 in DINO).
        teacher_temp: the teacher's temperature of this epoch (``teacher_temperature``).

    Returns:
        Scalar float32 loss.
    """
    targets = dino_targets(teacher_out, center, teacher_temp)
    return dino_cross_entropy(student_out, targets, student_temp)


@float32_only
def dino_cross_entropy(
    student_out: list[Tensor], targets: list[Tensor], student_temp: float
) -> Tensor:
    """DINO's loss from the teacher's targets (``dino_targets``).

    Student predictions: ``log_softmax(s / student_temp)``. Target i belongs to the
    student's view i (the global crops come first), so the pair (i, i) is skipped; the
    loss is the mean over the remaining pairs of the batch-mean cross-entropy: with 2
    global and L local crops, 2 (2 + L - 1) pairs.

    Args:
        student_out: V tensors (B, K), the student's outputs of every view, globals first.
        targets: G tensors (B, K), the teacher's targets of the first G views.
        student_temp: the student's temperature (0.1 in DINO).

    Returns:
        Scalar float32 loss.
    """
    if not targets or len(student_out) < 2 or len(targets) > len(student_out):
        raise ValueError(
            f"DINO needs at least 2 student views and 1 to {len(student_out)} teacher views, "
            f"got {len(student_out)} and {len(targets)}"
        )
    log_p = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student_out]
    total = student_out[0].new_zeros((), dtype=torch.float32)
    terms = 0
    for i, q in enumerate(targets):  # the reference's order of the sum
        for v, lp in enumerate(log_p):
            if v == i:  # the same view through both networks
                continue
            total = total + torch.sum(-q * lp, dim=-1).mean()
            terms += 1
    return total / terms


@float32_only
@torch.no_grad()
def dino_targets(teacher_out: list[Tensor], center: Tensor, teacher_temp: float) -> list[Tensor]:
    """The teacher's targets, ``softmax((t - center) / teacher_temp)`` per view: centred
    and sharpened, float32, no gradient."""
    center = center.float().reshape(1, -1)
    return [F.softmax((t.detach().float() - center) / teacher_temp, dim=-1) for t in teacher_out]


@float32_only
@torch.no_grad()
def target_entropy(targets: list[Tensor]) -> Tensor:
    """The targets' mean entropy as a share of ln K: 1 when every target is uniform, 0
    when each is one-hot.

    Centring alone drives DINO towards the uniform output (Caron et al., section 5.3:
    sharpening is what keeps it off), and there the loss sits at ln K and the backbone
    learns nothing: a share near 1 after the first epochs names that collapse.
    """
    rows = torch.cat(targets)
    entropy = torch.special.entr(rows).sum(dim=-1).mean()  # -q ln q, 0 where q is 0
    return entropy / math.log(rows.shape[-1]) if rows.shape[-1] > 1 else entropy


@float32_only
@torch.no_grad()
def update_center(center: Tensor, teacher_out: list[Tensor], momentum: float) -> Tensor:
    """The centre after one step: ``momentum * center + (1 - momentum) * mean``, the mean
    of every teacher output of the global batch (all views; under distributed training
    the per-rank sums are all-reduced, as DINO's ``update_center`` does).

    Args:
        center: (1, K), the current centre.
        teacher_out: G tensors (B, K), the teacher's outputs of this rank's batch.
        momentum: the centre's momentum (0.9 in DINO).

    Returns:
        (1, K) float32, the new centre (``center`` is not modified).
    """
    rows = torch.cat([t.detach().float() for t in teacher_out])
    batch_center = rows.sum(dim=0, keepdim=True)
    world = 1
    if distributed.is_distributed() and distributed.world_size() > 1:
        dist.all_reduce(batch_center)
        world = distributed.world_size()
    batch_center = batch_center / (rows.shape[0] * world)
    return center.float() * momentum + batch_center * (1 - momentum)


def teacher_temperature(
    epoch: int, warmup_temp: float, temp: float, warmup_epochs: int, epochs: int
) -> float:
    """The teacher's temperature of ``epoch`` (0-based): DINO's schedule, a linear warm-up
    from ``warmup_temp`` to ``temp`` over ``warmup_epochs`` (``np.linspace``: ``temp`` is
    reached at epoch ``warmup_epochs - 1``), then ``temp``.

    The same values as ``np.concatenate((np.linspace(warmup_temp, temp, warmup_epochs),
    np.ones(epochs - warmup_epochs) * temp))[epoch]``.
    """
    if not 0 <= epoch < max(epochs, warmup_epochs):
        raise ValueError(f"epoch {epoch} is outside the run's {epochs} epochs")
    if epoch >= warmup_epochs:
        return float(temp)
    if warmup_epochs == 1:  # np.linspace(a, b, 1) is [a]
        return float(warmup_temp)
    if epoch == warmup_epochs - 1:  # linspace's endpoint is exactly ``temp``
        return float(temp)
    step = (temp - warmup_temp) / (warmup_epochs - 1)
    return float(epoch * step + warmup_temp)
