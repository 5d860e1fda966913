"""Projection heads and predictors."""

from __future__ import annotations

import torch
from torch import nn

# Projection heads by name (``model.head``): ``bn`` has a BatchNorm on its output, as the
# contrastive references do; ``plain`` ends in a linear layer, as BYOL's and SwAV's.
HEADS = ("bn", "plain")


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear-BN-ReLU-Linear, no BatchNorm on the output: BYOL's projector and predictor
    and SwAV's projection head have this shape (``model.head=plain``)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, out_dim),
    )


def bn_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear-BN-ReLU-Linear(no bias)-BN: the projection head of BCL's SimCLR and SDCLR
    (``proj_head`` of MediaBrain-SJTU/BCL ``models/simclr.py``) and of SDCLR's
    ``twoLayerProj`` head, whose output BatchNorm the NT-Xent loss reads
    (``model.head=bn``)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, out_dim, bias=False),
        nn.BatchNorm1d(out_dim),
    )


def projection_head(kind: str, in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """The projection head ``kind`` (one of ``HEADS``)."""
    if kind == "bn":
        return bn_head(in_dim, hidden_dim, out_dim)
    if kind == "plain":
        return mlp_head(in_dim, hidden_dim, out_dim)
    raise ValueError(f"projection head must be one of {list(HEADS)}, got {kind!r}")


def head_of_state(state: dict[str, torch.Tensor], prefix: str = "projector.") -> str:
    """Which head (``bn`` or ``plain``) a state dict's projector is: only ``bn`` has a
    fifth layer, the output BatchNorm."""
    return "bn" if any(k.startswith(f"{prefix}4.") for k in state) else "plain"


def head_sizes(state: dict[str, torch.Tensor], prefix: str = "projector.") -> tuple[int, int]:
    """(hidden, output) sizes of a state dict's projector; KeyError if it has none."""
    return int(state[f"{prefix}0.weight"].shape[0]), int(state[f"{prefix}3.weight"].shape[0])


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
