"""Projection heads and predictors."""

from __future__ import annotations

import torch
from torch import nn


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear-BN-ReLU-Linear: SDCLR's projection head (512-512-128) and BYOL's projector
    and predictor have this shape."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, out_dim),
    )


class Encoder(nn.Module):
    """Backbone followed by a projection head; ``forward`` returns both outputs."""

    def __init__(self, backbone: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        return features, self.projector(features)


def select_feature(outputs: tuple[torch.Tensor, torch.Tensor], feature: str) -> torch.Tensor:
    """The z of Eq. 1 and 3 of the FASSL paper from an ``Encoder``'s (backbone, projection)
    outputs: the projection head's output or the backbone's feature."""
    backbone_out, projection = outputs
    return projection if feature == "projection" else backbone_out


class CosineClassifier(nn.Module):
    """Cosine similarity of the feature to each class's weight vector: LDAM's normalised
    linear layer (Cao et al., NeurIPS 2019, ``NormedLinear`` of their code), so margins
    and the logit scale act on cosines in [-1, 1]."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        weight = torch.empty(in_dim, num_classes).uniform_(-1, 1)
        self.weight = nn.Parameter(weight.renorm(2, 1, 1e-5).mul(1e5))  # unit columns

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, dim=1) @ nn.functional.normalize(self.weight, dim=0)
