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
    rule: str = "epoch"

    @classmethod
    def from_config(cls, base: float, cfg: TemperatureConfig) -> TemperatureSchedule:
        return cls(base, cfg.schedule, cfg.tau_min, cfg.tau_max, cfg.period_epochs, cfg.rule)

    @property
    def scheduled(self) -> bool:
        return self.schedule == "cosine"

    def period(self, num_epochs: int) -> float:
        """The period T in epochs: ``period_epochs``, or a fifth of the run."""
        return self.period_epochs if self.period_epochs > 0 else num_epochs / PERIODS_PER_RUN

    def at(self, step: int, total_steps: int, num_epochs: int) -> float:
        """The temperature at ``step`` (0-based) of a run of ``total_steps`` over
        ``num_epochs``. Rule ``epoch`` (Kukleva et al.'s ``train_simCLR.py``: tau =
        tau_min + (tau_max - tau_min)(1 + cos(pi e / t_max)) / 2 with e the 1-based epoch
        and a period of 2 t_max epochs) holds tau for the epoch; ``step`` moves it every
        step from step 0."""
        if not self.scheduled:
            return self.base
        epochs = max(num_epochs, 1)
        if self.rule == "epoch":
            epoch = step * epochs // max(total_steps, 1) + 1
            return cosine_temperature(epoch, self.period(epochs), self.tau_min, self.tau_max)
        period = self.period(epochs) * total_steps / epochs
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
