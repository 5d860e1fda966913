"""A teacher that follows the student by EMA: shared by BYOL and stage 2 of FASSL.

``MomentumTeacher`` owns the frozen copy (``self.teacher``), its decay schedule and the
update after every optimizer step; subclasses only say how a batch becomes a loss.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from fassl.methods.base import Method, two_view_forward
from fassl.models import Encoder


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, tau: float) -> None:
    """Teacher EMA of Eq. 4 of the FASSL paper: theta_T <- tau theta_T + (1 - tau) theta_S.

    Applied to every parameter. Buffers (BatchNorm running statistics, batch counters)
    are copied from the student instead of averaged: the teacher normalises with batch
    statistics during training anyway, and copying keeps its running statistics those
    of the current weights rather than a lagging average of older ones. Both are
    multi-tensor (``_foreach``) ops: a few kernel launches for the whole network instead
    of one or more per tensor, the same arithmetic as a per-tensor ``lerp_`` / ``copy_``.

    Both modules must have the same structure (parameter and buffer names and shapes);
    a mismatch raises ValueError rather than silently pairing the wrong tensors.

    Args:
        teacher: module updated in place.
        student: module read.
        tau: decay rate in [0, 1]; 0 copies the student, 1 keeps the teacher.
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    params: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
    buffers: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
    for kind, t_items, s_items, lists in (
        ("parameter", teacher.named_parameters(), student.named_parameters(), params),
        ("buffer", teacher.named_buffers(), student.named_buffers(), buffers),
    ):
        t_dict, s_dict = dict(t_items), dict(s_items)
        if t_dict.keys() != s_dict.keys():
            missing = sorted(set(s_dict) - set(t_dict))[:5]
            extra = sorted(set(t_dict) - set(s_dict))[:5]
            raise ValueError(
                f"ema_update: teacher and student {kind}s differ; only in the student: "
                f"{missing}, only in the teacher: {extra}"
            )
        for name, t in t_dict.items():
            if t.shape != s_dict[name].shape:
                raise ValueError(
                    f"ema_update: {kind} '{name}' has shape {tuple(t.shape)} in the teacher "
                    f"and {tuple(s_dict[name].shape)} in the student"
                )
            lists[0].append(t)
            lists[1].append(s_dict[name].to(t.dtype) if kind == "parameter" else s_dict[name])
    if params[0]:
        # lerp is exact at both ends: weight 1 gives s, weight 0 gives t.
        torch._foreach_lerp_(params[0], params[1], 1.0 - tau)
    if buffers[0]:
        torch._foreach_copy_(buffers[0], buffers[1])


def cosine_momentum(step: int, total_steps: int, base: float, end: float) -> float:
    """BYOL's cosine schedule of the EMA decay (Grill et al., NeurIPS 2020, Sec. 3.2).

    ``end - (end - base) * (cos(pi * step / total_steps) + 1) / 2``: ``base`` at step 0,
    ``end`` at ``total_steps`` (BYOL: 0.996 -> 1). Steps outside [0, total_steps] are
    clamped.

    Args:
        step: current optimisation step.
        total_steps: steps of the whole run, at least 1.
        base: tau at the start.
        end: tau at the end.

    Returns:
        The decay tau for this step.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    progress = min(max(step / total_steps, 0.0), 1.0)
    return end - (end - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@dataclass(frozen=True)
class EmaSchedule:
    """The EMA decay tau per step: ``fixed`` at ``base``, or ``cosine`` from base to end."""

    base: float
    end: float
    schedule: str = "fixed"

    def at(self, step: int, total_steps: int) -> float:
        if self.schedule == "cosine":
            return cosine_momentum(step, total_steps, self.base, self.end)
        return self.base


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy whose parameters take no gradient."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


class MomentumTeacher(Method):
    """A student (``self.encoder``, evaluated) with a predictor, and its EMA teacher."""

    def __init__(
        self, student: Encoder, teacher: nn.Module, predictor: nn.Module, ema: EmaSchedule
    ) -> None:
        super().__init__(student)
        self.teacher = teacher
        self.predictor = predictor
        self.ema = ema

    def predict(self, view1: torch.Tensor, view2: torch.Tensor):
        """Student predictions of both views and the teacher's outputs (no gradient).

        Returns ((p1, p2), ((f1, f2), (t1, t2))): predictions, then the teacher's
        backbone features and projections of each view.
        """
        _, (s1, s2) = two_view_forward(self.encoder, view1, view2)
        p1, p2 = self.predictor(torch.cat([s1, s2])).chunk(2)
        with torch.no_grad():
            teacher_out = two_view_forward(self.teacher, view1, view2)
        return (p1, p2), teacher_out

    def on_step_end(self, step: int, total_steps: int) -> None:
        ema_update(self.teacher, self.encoder, self.ema.at(step, total_steps))
