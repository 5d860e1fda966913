"""BYOL (Grill et al., NeurIPS 2020): an online network predicts an EMA target's projection.

The loss is summed over both view orders; the target (``self.teacher``) follows the
online network by EMA whose momentum is fixed or rises from ``ema`` to ``ema_end`` on a
cosine schedule.
"""

from __future__ import annotations

import torch

from fassl.config import Config
from fassl.losses import byol_loss
from fassl.methods.base import State
from fassl.methods.momentum import EmaSchedule, MomentumTeacher, frozen_copy
from fassl.models import Encoder, mlp_head


class BYOL(MomentumTeacher):
    name = "byol"
    head = "plain"  # its projector ends in a linear layer
    sections = ("byol",)

    @classmethod
    def from_config(cls, cfg: Config, encoder: Encoder, init: State | None, source: str) -> BYOL:
        b = cfg.byol
        predictor = mlp_head(cfg.model.proj_dim, b.pred_hidden, cfg.model.proj_dim)
        ema = EmaSchedule(b.ema, b.ema_end, b.ema_schedule)
        return cls(encoder, frozen_copy(encoder), predictor, ema)

    def forward(self, views: list[torch.Tensor]):  # type: ignore[override]
        (p1, p2), (_, (t1, t2)) = self.predict(views)
        loss = byol_loss(p1, p2, t1, t2)
        return loss, {"loss": loss.detach()}

    def upgrade_state(self, state: State) -> State:
        # Checkpoints before the shared momentum teacher called it ``target``.
        return {
            ("teacher." + k.removeprefix("target.") if k.startswith("target.") else k): v
            for k, v in state.items()
        }
