"""SDCLR (Jiang et al., ICML 2021): SimCLR between the dense network and a pruned copy.

The pruned copy zeroes the ``prune_ratio`` smallest-magnitude weights of the backbone's
convs (and linear layers, for a backbone that has them; one global threshold, recomputed
at the start of every epoch) and has its own normalisation layers.
NT-Xent contrasts dense(view 1) with pruned(view 2). The dense branch is what gets
evaluated and what initialises FASSL's teacher.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from fassl.config import Config
from fassl.losses import nt_xent
from fassl.methods.base import EpochContext, ScheduledContrast, State, pair
from fassl.methods.temperature import TemperatureSchedule
from fassl.models import Encoder
from fassl.models.pruning import (
    add_pruned_norms,
    dense_state_dict,
    global_magnitude_masks,
    pruned_norms,
    pruned_weight_names,
)


class SDCLR(ScheduledContrast):
    name = "sdclr"
    sections = ("sdclr", "temperature")

    def __init__(
        self,
        encoder: Encoder,
        temperature: float,
        prune_ratio: float,
        schedule: TemperatureSchedule | None = None,
    ) -> None:
        pruned = add_pruned_norms(encoder)
        super().__init__(pruned, schedule or TemperatureSchedule(temperature))  # type: ignore[arg-type]
        self.prune_ratio = prune_ratio
        self.pruned_names = pruned_weight_names(self.encoder)
        params = dict(self.encoder.named_parameters())
        for i, name in enumerate(self.pruned_names):
            # Saved with every checkpoint; all-ones until the first epoch prunes.
            self.register_buffer(f"mask_{i}", torch.ones_like(params[name], dtype=torch.bool))
        self.update_masks()

    @classmethod
    def from_config(cls, cfg: Config, encoder: Encoder, init: State | None, source: str) -> SDCLR:
        t = cfg.sdclr.temperature
        schedule = TemperatureSchedule.from_config(t, cfg.temperature)
        return cls(encoder, t, cfg.sdclr.prune_ratio, schedule)

    def masks(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, f"mask_{i}") for i, name in enumerate(self.pruned_names)}

    @torch.no_grad()
    def update_masks(self) -> None:
        params = dict(self.encoder.named_parameters())
        weights = {name: params[name] for name in self.pruned_names}
        for i, mask in enumerate(global_magnitude_masks(weights, self.prune_ratio).values()):
            getattr(self, f"mask_{i}").copy_(mask)

    def on_epoch_start(self, ctx: EpochContext) -> None:
        super().on_epoch_start(ctx)
        self.update_masks()

    def pruned_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = dict(self.encoder.named_parameters())
        masked = {name: params[name] * mask for name, mask in self.masks().items()}
        with pruned_norms(self.encoder):
            return functional_call(self.encoder, masked, (x,))

    def dense_and_pruned(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projections of view 1 through the dense network and view 2 through the pruned."""
        view1, view2 = pair(views)
        _, z1 = self.encoder(view1)
        _, z2 = self.pruned_forward(view2)
        return z1, z2

    def forward(self, views: list[torch.Tensor]):  # type: ignore[override]
        z1, z2 = self.dense_and_pruned(views)
        loss = nt_xent(z1, z2, self.temperature)
        return loss, {"loss": loss.detach()}

    def export_state(self) -> State:
        return {
            k: v.detach().clone() for k, v in dense_state_dict(self.encoder.state_dict()).items()
        }
