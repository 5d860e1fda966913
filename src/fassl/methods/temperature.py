"""The contrastive temperature per step: fixed, or a cosine schedule (Kukleva et al.).

"Temperature Schedules for Self-Supervised Contrastive Methods on Long-Tail Data"
(Kukleva, Böhle, Schiele, Kuehne, Rupprecht, ICLR 2023): a large tau favours group-wise
discrimination (frequent classes), a small one instance discrimination (rare classes);
cycling between them with a cosine helps the tail without labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fassl.config import TemperatureConfig

# Kukleva et al. train 2,000 epochs with a period of 400: five periods a run.
PERIODS_PER_RUN = 5


def cosine_temperature(step: float, period_steps: float, tau_min: float, tau_max: float) -> float:
    """tau_t = tau_min + (tau_max - tau_min) / 2 * (1 + cos(2 pi t / T)) (Kukleva et al.,
    ICLR 2023, Sec. 4): ``tau_max`` at t = 0 and every whole period T, ``tau_min`` half way.

    Args:
        step: the optimisation step t (0-based).
        period_steps: the period T in steps, > 0.
        tau_min: the lowest temperature.
        tau_max: the highest temperature.

    Returns:
        The temperature at ``step``.
    """
    if period_steps <= 0:
        raise ValueError(f"period_steps must be > 0, got {period_steps}")
    return tau_min + 0.5 * (tau_max - tau_min) * (
        1.0 + math.cos(2.0 * math.pi * step / period_steps)
    )


@dataclass(frozen=True)
class TemperatureSchedule:
    """A method's temperature: ``base`` when fixed, else the cosine of ``temperature.*``."""

    base: float
    schedule: str = "fixed"
    tau_min: float = 0.1
    tau_max: float = 1.0
    period_epochs: float = 0.0

    @classmethod
    def from_config(cls, base: float, cfg: TemperatureConfig) -> TemperatureSchedule:
        return cls(base, cfg.schedule, cfg.tau_min, cfg.tau_max, cfg.period_epochs)

    @property
    def scheduled(self) -> bool:
        return self.schedule == "cosine"

    def at(self, step: int, total_steps: int, num_epochs: int) -> float:
        """The temperature at ``step`` of a run of ``total_steps`` over ``num_epochs``."""
        if not self.scheduled:
            return self.base
        if self.period_epochs > 0:
            period = self.period_epochs * total_steps / max(num_epochs, 1)
        else:
            period = total_steps / PERIODS_PER_RUN
        return cosine_temperature(step, max(period, 1.0), self.tau_min, self.tau_max)


class ScheduledTemperature(torch.nn.Module):
    """The temperature a loss reads: a float when fixed (as it always was), else a 0-d
    buffer refilled before every step, so a compiled forward sees a tensor, not a new
    Python constant each step. The buffer is not saved: it follows from the step."""

    tau: torch.Tensor

    def __init__(self, schedule: TemperatureSchedule) -> None:
        super().__init__()
        self.schedule = schedule
        self.num_epochs = 1
        self.register_buffer("tau", torch.tensor(schedule.base), persistent=False)

    def value(self) -> float | torch.Tensor:
        return self.tau if self.schedule.scheduled else self.schedule.base

    def set_epochs(self, num_epochs: int) -> None:
        self.num_epochs = num_epochs

    def step(self, step: int, total_steps: int) -> None:
        if self.schedule.scheduled:
            self.tau.fill_(self.schedule.at(step, total_steps, self.num_epochs))
