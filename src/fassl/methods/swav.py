"""SwAV (Caron et al., NeurIPS 2020): swapped prediction of Sinkhorn cluster codes.

Features and prototypes are L2-normalised; codes come from Sinkhorn-Knopp on the
prototype scores (with a queue of past features at small batch sizes); the prototypes
stay frozen for the first ``freeze_prototypes_steps`` steps. With ``swav.local_crops``
it is SwAV's multi-crop (``main_swav.py``): codes of the two global crops only, each
predicted from every other crop.

The queue's fill count stays on the device: the unfilled rows are masked out of
Sinkhorn rather than sliced off, so a step never reads the count on the host and the
shapes a compiled step sees do not change as the queue fills.
"""

from __future__ import annotations

import torch
from torch import nn

from fassl.augment.views import ViewSpec
from fassl.config import Config, SwAVConfig
from fassl.data import LongTailData
from fassl.losses import sinkhorn, swav_loss, swav_multicrop_loss
from fassl.methods.base import (
    EpochContext,
    Method,
    State,
    multi_view_forward,
    two_view_forward,
)
from fassl.models import Encoder
from fassl.prototypes import normalize_

LOCAL_SIDE = 96 / 224  # SwAV's local crop side as a share of its global one (224 + 96)


def swav_view_spec(cfg: SwAVConfig, image_size: int) -> ViewSpec | None:
    """The multi-crop views (2 global crops of ``augment``, ``local_crops`` smaller ones,
    the same colour distortion on all as SwAV's); None for the default pair."""
    if cfg.local_crops == 0:
        return None
    return ViewSpec(
        global_crops=2,
        local_crops=cfg.local_crops,
        local_size=cfg.local_size or max(1, round(image_size * LOCAL_SIDE)),
        local_scale=(cfg.local_scale_min, cfg.local_scale_max),
    )


class SwAV(Method):
    name = "swav"
    head = "plain"  # its projector ends in a linear layer
    sections = ("swav",)

    def __init__(self, encoder: Encoder, dim: int, cfg: SwAVConfig, image_size: int = 32) -> None:
        super().__init__(encoder)
        self.cfg = cfg
        spec = swav_view_spec(cfg, image_size)
        if spec is not None:  # multi-crop; else the class's default pair
            self.view_spec = spec
        self.prototypes = nn.Linear(dim, cfg.num_prototypes, bias=False)
        self.temperature, self.epsilon = cfg.temperature, cfg.epsilon
        self.sinkhorn_iters = cfg.sinkhorn_iters
        self.queue_start_epoch = cfg.queue_start_epoch
        self.freeze_prototypes_steps = cfg.freeze_prototypes_steps
        # Two queues (one per view) of past normalised features, newest first; the first
        # ``queue_filled`` rows of each are filled.
        self.register_buffer("queue", torch.zeros(2, cfg.queue_length, dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self.use_queue = False

    @classmethod
    def from_config(cls, cfg: Config, encoder: Encoder, init: State | None, source: str) -> SwAV:
        # the image side until the data is attached (it sets the local crops' own)
        return cls(encoder, cfg.model.proj_dim, cfg.swav, cfg.data.image_size)

    def attach_data(self, data: LongTailData) -> None:
        spec = swav_view_spec(self.cfg, data.image_size)
        if spec is not None:
            self.view_spec = spec

    def on_epoch_start(self, ctx: EpochContext) -> None:
        self.use_queue = self.queue.shape[1] > 0 and ctx.epoch >= self.queue_start_epoch

    @torch.no_grad()
    def push_queue(self, z1: torch.Tensor, z2: torch.Tensor) -> None:
        """Roll the queue by one batch: newest features first, oldest dropped."""
        n = min(z1.shape[0], self.queue.shape[1])
        self.queue[:, n:] = self.queue[:, :-n].clone()
        self.queue[0, :n] = z1[:n].to(self.queue.dtype)
        self.queue[1, :n] = z2[:n].to(self.queue.dtype)
        self.queue_filled.add_(n).clamp_(max=self.queue.shape[1])  # on the device

    def codes(self, scores: torch.Tensor, view: int) -> torch.Tensor:
        with torch.no_grad():
            n = scores.shape[0]
            if not self.use_queue:
                return sinkhorn(scores.detach(), self.epsilon, self.sinkhorn_iters)
            # The whole queue, its unfilled rows masked: the same codes as the filled
            # rows alone, without reading the count on the host.
            queued = self.queue[view] @ self.prototypes.weight.detach().float().T
            rows = torch.arange(queued.shape[0], device=queued.device)
            valid = torch.cat([rows.new_ones(n, dtype=torch.bool), rows < self.queue_filled])
            scores = torch.cat([scores.detach().float(), queued])
            return sinkhorn(scores, self.epsilon, self.sinkhorn_iters, valid)[:n]

    def forward(self, views: list[torch.Tensor]):  # type: ignore[override]
        normalize_(self.prototypes.weight)
        if len(views) == 2:
            _, projections = two_view_forward(self.encoder, views)
        else:  # multi-crop: one pass per crop size
            _, projections = multi_view_forward(self.encoder, views)
        z = [nn.functional.normalize(p.float(), dim=1) for p in projections]
        scores = [self.prototypes(zv) for zv in z]
        # codes of the global crops only (main_swav.py's crops_for_assign [0, 1])
        codes = [self.codes(scores[0], 0), self.codes(scores[1], 1)]
        if len(views) == 2:
            loss = swav_loss(scores[0], scores[1], codes[0], codes[1], self.temperature)
        else:
            loss = swav_multicrop_loss(scores, codes, self.temperature)
        if self.use_queue:
            self.push_queue(z[0].detach(), z[1].detach())
        return loss, {"loss": loss.detach()}

    def on_after_backward(self, step: int) -> None:
        if step < self.freeze_prototypes_steps:
            self.prototypes.weight.grad = None
