"""Backbones (own ResNets, timm and torchvision models), heads, SDCLR's pruned branch."""

from fassl.models.backbones import build_backbone, check_backbone, is_library_arch
from fassl.models.heads import HEADS, Encoder, head_of_state, mlp_head, projection_head
from fassl.models.resnet import ResNet

__all__ = [
    "HEADS",
    "Encoder",
    "ResNet",
    "build_backbone",
    "check_backbone",
    "head_of_state",
    "is_library_arch",
    "mlp_head",
    "projection_head",
]
