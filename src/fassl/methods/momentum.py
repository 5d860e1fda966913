"""A teacher that follows the student by EMA: shared by BYOL and stage 2 of FASSL.

``MomentumTeacher`` owns the frozen copy (``self.teacher``), its decay schedule and the
update after every optimizer step; subclasses only say how a batch becomes a loss.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass

import torch
from torch import nn

from fassl.methods.base import Method, two_view_forward
from fassl.models import Encoder


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, tau: float) -> None:
    """Teacher EMA of Eq. 4 of the FASSL paper: theta_T <- tau theta_T + (1 - tau) theta_S.

    One update of a pair seen once (``EmaPairs`` pairs the tensors, then updates them);
    a method that updates every step keeps its ``EmaPairs``.

    Args:
        teacher: module updated in place.
        student: module read.
        tau: decay rate in [0, 1]; 0 copies the student, 1 keeps the teacher.
    """
    EmaPairs(teacher, student).update(tau)


# Where a tensor lives: its module's _parameters or _buffers dict, and its key there.
_Slot = tuple[dict[str, torch.Tensor | None], str]


def _named_slots(module: nn.Module, kind: str) -> dict[str, _Slot]:
    """Every parameter (or buffer) of ``module`` by name, as ``named_parameters`` (or
    ``named_buffers``) lists them: same names, same order, a shared tensor once."""
    seen: set[int] = set()
    slots: dict[str, _Slot] = {}
    for prefix, sub in module.named_modules():
        owner = sub._parameters if kind == "parameter" else sub._buffers
        for key, tensor in owner.items():
            if tensor is None or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            slots[f"{prefix}.{key}" if prefix else key] = (owner, key)
    return slots


class EmaPairs:
    """The teacher's tensors and the student's they follow, paired by name once.

    Every parameter is averaged. Buffers (BatchNorm running statistics, batch counters)
    are copied from the student instead: the teacher normalises with batch statistics
    during training anyway, and copying keeps its running statistics those of the
    current weights rather than a lagging average of older ones. Both are multi-tensor
    (``_foreach``) ops on lists built once: a few kernel launches for the whole network,
    the same arithmetic as a per-tensor ``lerp_`` / ``copy_``.

    The pairing checks the structure (names and shapes; a mismatch raises ValueError
    rather than silently pairing the wrong tensors). A step only checks that every
    paired tensor is still the one its module holds: ``.to()`` re-creates buffers (and
    parameters, under ``torch.__future__``'s overwrite setting), ``load_state_dict(...,
    assign=True)`` replaces both, and then the tensors are paired again.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module) -> None:
        self.teacher, self.student = teacher, student
        self._pair()

    def _pair(self) -> None:
        lists: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        slots: list[_Slot] = []
        for kind in ("parameter", "buffer"):
            t_slots, s_slots = _named_slots(self.teacher, kind), _named_slots(self.student, kind)
            if t_slots.keys() != s_slots.keys():
                missing = sorted(set(s_slots) - set(t_slots))[:5]
                extra = sorted(set(t_slots) - set(s_slots))[:5]
                raise ValueError(
                    f"ema_update: teacher and student {kind}s differ; only in the student: "
                    f"{missing}, only in the teacher: {extra}"
                )
            pair: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
            for name, (owner, key) in t_slots.items():
                s_owner, s_key = s_slots[name]
                t, s = owner[key], s_owner[s_key]
                assert t is not None and s is not None  # _named_slots skips None
                if t.shape != s.shape:
                    raise ValueError(
                        f"ema_update: {kind} '{name}' has shape {tuple(t.shape)} in the "
                        f"teacher and {tuple(s.shape)} in the student"
                    )
                pair[0].append(t)
                pair[1].append(s)
                slots += [(owner, key), (s_owner, s_key)]
            lists[kind] = pair
        self._params, self._buffers = lists["parameter"], lists["buffer"]
        # a student of another dtype (rare) is cast every step, as the lerp needs
        self._cast = any(t.dtype != s.dtype for t, s in zip(*self._params, strict=True))
        self._owners, self._keys = [o for o, _ in slots], [k for _, k in slots]
        self._held = [o[k] for o, k in slots]

    def _still_held(self) -> bool:
        """Every paired tensor is still the one in its module (identity; a loop in C)."""
        return all(map(operator.is_, map(operator.getitem, self._owners, self._keys), self._held))

    @torch.no_grad()
    def update(self, tau: float) -> None:
        """theta_T <- tau theta_T + (1 - tau) theta_S for every parameter; buffers copied.

        ``tau`` in [0, 1]: 0 copies the student, 1 keeps the teacher (lerp is exact at
        both ends: weight 1 gives s, weight 0 gives t).
        """
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must be in [0, 1], got {tau}")
        if not self._still_held():
            self._pair()
        teacher, student = self._params
        if self._cast:
            student = [s.to(t.dtype) for t, s in zip(teacher, student, strict=True)]
        if teacher:
            torch._foreach_lerp_(teacher, student, 1.0 - tau)
        if self._buffers[0]:
            torch._foreach_copy_(self._buffers[0], self._buffers[1])


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
        self.ema_pairs = EmaPairs(teacher, student)  # the structure checked here, once

    def predict(self, views: list[torch.Tensor]):
        """Student predictions of both views and the teacher's outputs (no gradient).

        Returns ((p1, p2), ((f1, f2), (t1, t2))): predictions, then the teacher's
        backbone features and projections of each view.
        """
        _, (s1, s2) = two_view_forward(self.encoder, views)
        p1, p2 = self.predictor(torch.cat([s1, s2])).chunk(2)
        with torch.no_grad():
            teacher_out = two_view_forward(self.teacher, views)
        return (p1, p2), teacher_out

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.ema_pairs.update(self.ema.at(step, total_steps))
