"""Backbones, heads and the pruned branch of SDCLR."""

from fassl.models.heads import HEADS, Encoder, head_of_state, mlp_head, projection_head
from fassl.models.resnet import ResNet, build_backbone

__all__ = [
    "HEADS",
    "Encoder",
    "ResNet",
    "build_backbone",
    "head_of_state",
    "mlp_head",
    "projection_head",
]
