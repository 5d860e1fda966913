"""Backbones, heads and the pruned branch of SDCLR."""

from fassl.models.heads import Encoder, mlp_head
from fassl.models.resnet import ResNet, build_backbone

__all__ = ["Encoder", "ResNet", "build_backbone", "mlp_head"]
