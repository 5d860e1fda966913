"""BYOL (Grill et al., NeurIPS 2020): an online network predicts an EMA target's projection.

The loss is summed over both view orders; the target follows the online network by EMA
whose momentum is fixed or rises from ``ema`` to ``ema_end`` on a cosine schedule.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fassl.losses import byol_loss, cosine_momentum, ema_update
from fassl.methods.base import Method, two_view_forward
from fassl.models import Encoder


def ema_momentum(schedule: str, base: float, end: float, step: int, total_steps: int) -> float:
    return cosine_momentum(step, total_steps, base, end) if schedule == "cosine" else base


def frozen_copy(module: nn.Module) -> nn.Module:
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


class BYOL(Method):
    name = "byol"

    def __init__(
        self,
        encoder: Encoder,
        predictor: nn.Module,
        ema: float,
        ema_end: float,
        ema_schedule: str,
    ) -> None:
        super().__init__(encoder)
        self.predictor = predictor
        self.target = frozen_copy(encoder)
        self.ema, self.ema_end, self.ema_schedule = ema, ema_end, ema_schedule

    def forward(self, view1: torch.Tensor, view2: torch.Tensor):  # type: ignore[override]
        _, (z1, z2) = two_view_forward(self.encoder, view1, view2)
        p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        with torch.no_grad():
            _, (t1, t2) = two_view_forward(self.target, view1, view2)
        loss = byol_loss(p1, p2, t1, t2)
        return loss, {"loss": loss.detach()}

    def on_step_end(self, step: int, total_steps: int) -> None:
        tau = ema_momentum(self.ema_schedule, self.ema, self.ema_end, step, total_steps)
        ema_update(self.target, self.encoder, tau)
