"""``model.arch`` -> a backbone returning pooled features of size ``out_dim``."""

from __future__ import annotations

from typing import Any

from torch import nn

from fassl.models.library import build_library_backbone
from fassl.models.resnet import build_resnet
from fassl.registry import split_arch


def build_backbone(
    arch: str, width: int = 64, cifar_stem: bool = True, kwargs: dict[str, Any] | None = None
) -> nn.Module:
    """The project's ResNet (``width``, ``cifar_stem``) or a library's model (``kwargs``)."""
    library, _ = split_arch(arch)
    if library is None:
        return build_resnet(arch, width, cifar_stem)
    return build_library_backbone(arch, kwargs)


def is_library_arch(arch: str) -> bool:
    return split_arch(arch)[0] is not None
