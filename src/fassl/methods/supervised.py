"""The supervised reference: a linear classifier on the backbone, trained on the labels.

The paper's Tables 1-2 list a "Supervised" row next to the self-supervised methods: the
same backbone trained with labels on the same long-tailed pre-training set, then probed
like every other method. It is the one method that reads labels during pre-training,
so it is a reference, never a candidate.

The training loop hands labels only to a method whose class sets ``needs_labels``
(``fassl.methods.base.training_labels``); ``attach_data`` sizes the classifier for the
dataset's classes before the optimizer is built, and ``forward`` gets the batch's labels
after the views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fassl.config import Config
from fassl.data import LongTailData
from fassl.methods.base import Method, State, pair
from fassl.models import Encoder


class Supervised(Method):
    """Cross-entropy of a linear classifier on the backbone features of both views.

    Both views, averaged: each image is seen under the same two augmentations the
    self-supervised methods see, so at equal epochs the backbone gets the same number of
    images through it (equal compute) and the same augmentation. One cross-entropy over
    the concatenated views is exactly the mean of the two per-view cross-entropies (the
    views have the same size). The projection head is not used: it is frozen (so no
    optimizer or DistributedDataParallel tracks it) and exported as initialised.
    """

    name = "supervised"
    needs_labels = True

    def __init__(self, encoder: Encoder) -> None:
        super().__init__(encoder)
        encoder.projector.requires_grad_(False)
        self.classifier: nn.Module | None = None

    @classmethod
    def from_config(
        cls, cfg: Config, encoder: Encoder, init: State | None, source: str
    ) -> Supervised:
        return cls(encoder)

    def attach_data(self, data: LongTailData) -> None:
        """Size the classifier for the data's classes (before the optimizer is built)."""
        self.set_num_classes(data.num_classes)

    def set_num_classes(self, num_classes: int) -> None:
        """Create the classifier for ``num_classes`` classes (on the backbone's device)."""
        if self.classifier is not None:
            if self.classifier.out_features != num_classes:
                raise ValueError(
                    f"the classifier has {self.classifier.out_features} classes, "
                    f"the data {num_classes}"
                )
            return
        out_dim = int(self.encoder.backbone.out_dim)
        device = next(self.encoder.backbone.parameters()).device
        self.classifier = self.make_classifier(out_dim, num_classes).to(device)

    def make_classifier(self, in_dim: int, num_classes: int) -> nn.Module:
        """The classifier on the backbone's features: a linear layer."""
        return nn.Linear(in_dim, num_classes)

    def classification_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of the classifier's float32 logits: cross-entropy."""
        return F.cross_entropy(logits, targets)

    def forward(  # type: ignore[override]
        self, views: list[torch.Tensor], labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if labels is None or self.classifier is None:
            raise ValueError(
                "the supervised method needs the batch's labels and a classifier sized by "
                "attach_data (the training loop does both)"
            )
        targets = torch.cat([labels, labels])
        view1, view2 = pair(views)
        logits = self.classifier(self.encoder.backbone(torch.cat([view1, view2]))).float()
        loss = self.classification_loss(logits, targets)
        accuracy = (logits.detach().argmax(1) == targets).float().mean()
        return loss, {"loss": loss.detach(), "train_acc": accuracy}
