"""SimCLR (Chen et al., ICML 2020): NT-Xent between two views of each image."""

from __future__ import annotations

import torch

from fassl.config import Config
from fassl.losses import nt_xent
from fassl.methods.base import ScheduledContrast, State, two_view_forward
from fassl.methods.temperature import TemperatureSchedule
from fassl.models import Encoder


class SimCLR(ScheduledContrast):
    name = "simclr"
    sections = ("simclr", "temperature")

    def __init__(
        self, encoder: Encoder, temperature: float, schedule: TemperatureSchedule | None = None
    ) -> None:
        super().__init__(encoder, schedule or TemperatureSchedule(temperature))

    @classmethod
    def from_config(cls, cfg: Config, encoder: Encoder, init: State | None, source: str) -> SimCLR:
        t = cfg.simclr.temperature
        return cls(encoder, t, TemperatureSchedule.from_config(t, cfg.temperature))

    def forward(self, views: list[torch.Tensor]):  # type: ignore[override]
        _, (z1, z2) = two_view_forward(self.encoder, views)
        loss = nt_xent(z1, z2, self.temperature)
        return loss, {"loss": loss.detach()}
