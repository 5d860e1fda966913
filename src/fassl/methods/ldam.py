"""LDAM-DRW (Cao et al., NeurIPS 2019), with self-supervised pre-training: LDAM-DRW+SSP.

The FASSL paper's Table 1 lists LDAM-DRW+SSP (Yang & Xu, "Rethinking the Value of Labels
for Improving Class-Imbalanced Learning", NeurIPS 2020): a supervised long-tail method
started from a self-supervised encoder of the same long-tailed images. Here it is the
supervised reference (``fassl.methods.supervised``: both views, the same augmentation and
epochs, then the same probes) with LDAM's loss and schedule:

- a cosine classifier, the true class's cosine lowered by the class's margin
  Delta_j ~ n_j^(-1/4) (the rarest class's margin ``ldam.max_margin``), times ``ldam.scale``;
- deferred re-weighting (DRW): plain cross-entropy weights until ``ldam.drw_start`` of the
  epochs, class-balanced weights (effective number, ``ldam.drw_beta``) after.

SSP is ``train.init_from`` a self-supervised export (``fassl compare``'s
``ldam_drw_ssp`` arm starts from the ``ldam.ssp_method`` run of the same seed). Like
``supervised`` it reads labels, so it is a reference, never a candidate, and refuses
unlabeled data.
"""

from __future__ import annotations

import torch
from torch import nn

from fassl.config import Config
from fassl.data import LongTailData
from fassl.losses import drw_class_weights, ldam_loss, ldam_margins
from fassl.methods.base import EpochContext, State
from fassl.methods.supervised import Supervised
from fassl.models import Encoder
from fassl.models.heads import CosineClassifier


def drw_active(epoch: int, num_epochs: int, start: float) -> bool:
    """Whether epoch ``epoch`` (0-based) of ``num_epochs`` re-weights: from the first epoch
    at or after ``start`` of the run (LDAM-DRW: epoch 160 of 200, ``start`` = 0.8)."""
    return epoch >= int(start * num_epochs)


class LDAMDRW(Supervised):
    """The supervised reference with LDAM's margins and deferred re-weighting."""

    name = "ldam_drw"
    sections = ("ldam",)
    margins: torch.Tensor
    class_weights: torch.Tensor

    def __init__(
        self, encoder: Encoder, max_margin: float, scale: float, drw_start: float, beta: float
    ) -> None:
        super().__init__(encoder)
        self.max_margin, self.scale, self.drw_start, self.beta = max_margin, scale, drw_start, beta
        self.counts = torch.ones(0)
        # set by attach_data and at each epoch start; they follow from the data and the
        # epoch, so they are not saved
        self.register_buffer("margins", torch.zeros(0), persistent=False)
        self.register_buffer("class_weights", torch.zeros(0), persistent=False)

    @classmethod
    def from_config(cls, cfg: Config, encoder: Encoder, init: State | None, source: str) -> LDAMDRW:
        c = cfg.ldam
        return cls(encoder, c.max_margin, c.scale, c.drw_start, c.drw_beta)

    def attach_data(self, data: LongTailData) -> None:
        super().attach_data(data)
        # a class without pre-training images gets the largest margin, as if it had one
        self.counts = torch.tensor(data.class_counts, dtype=torch.float32).clamp_min(1.0)
        device = self.margins.device
        self.margins = ldam_margins(self.counts, self.max_margin).to(device)
        self.class_weights = torch.ones_like(self.counts).to(device)

    def make_classifier(self, in_dim: int, num_classes: int) -> nn.Module:
        return CosineClassifier(in_dim, num_classes)

    def on_epoch_start(self, ctx: EpochContext) -> None:
        beta = self.beta if drw_active(ctx.epoch, ctx.num_epochs, self.drw_start) else 0.0
        self.class_weights = drw_class_weights(self.counts, beta).to(self.margins.device)

    def classification_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ldam_loss(logits, targets, self.margins, self.scale, self.class_weights)
