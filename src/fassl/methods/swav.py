"""SwAV (Caron et al., NeurIPS 2020): swapped prediction of Sinkhorn cluster codes.

Features and prototypes are L2-normalised; codes come from Sinkhorn-Knopp on the
prototype scores (with a queue of past features at small batch sizes); the prototypes
stay frozen for the first ``freeze_prototypes_steps`` steps.

The queue's fill count stays on the device: the unfilled rows are masked out of
Sinkhorn rather than sliced off, so a step never reads the count on the host and the
shapes a compiled step sees do not change as the queue fills.
"""

from __future__ import annotations

import torch
from torch import nn

from fassl.config import Config, SwAVConfig
from fassl.losses import sinkhorn, swav_loss
from fassl.methods.base import EpochContext, Method, State, two_view_forward
from fassl.models import Encoder
from fassl.prototypes import normalize_


class SwAV(Method):
    name = "swav"
    head = "plain"  # its projector ends in a linear layer
    sections = ("swav",)

    def __init__(self, encoder: Encoder, dim: int, cfg: SwAVConfig) -> None:
        super().__init__(encoder)
        if cfg.num_prototypes < 1:
            raise ValueError(f"swav.num_prototypes must be at least 1, got {cfg.num_prototypes}")
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
        return cls(encoder, cfg.model.proj_dim, cfg.swav)

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
        _, (z1, z2) = two_view_forward(self.encoder, views)
        z1, z2 = (
            nn.functional.normalize(z1.float(), dim=1),
            nn.functional.normalize(z2.float(), dim=1),
        )
        s1, s2 = self.prototypes(z1), self.prototypes(z2)
        q1, q2 = self.codes(s1, 0), self.codes(s2, 1)
        loss = swav_loss(s1, s2, q1, q2, self.temperature)
        if self.use_queue:
            self.push_queue(z1.detach(), z2.detach())
        return loss, {"loss": loss.detach()}

    def on_after_backward(self, step: int) -> None:
        if step < self.freeze_prototypes_steps:
            self.prototypes.weight.grad = None
