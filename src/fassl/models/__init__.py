"""Backbones, heads and the pruned branch of SDCLR."""

from fassl.models.heads import Encoder, init_prototypes, mlp_head
from fassl.models.resnet import ResNet, build_backbone

__all__ = ["Encoder", "ResNet", "build_backbone", "init_prototypes", "mlp_head"]
