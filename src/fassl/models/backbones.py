"""``model.arch`` -> a backbone returning pooled features of size ``out_dim``."""

from __future__ import annotations

from typing import Any

from torch import nn

from fassl.models.library import build_library_backbone, check_images
from fassl.models.resnet import build_resnet
from fassl.registry import LIBRARIES, split_arch


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


def check_backbone(arch: str, kwargs: dict[str, Any] | None, image_size: int) -> None:
    """A library model takes ``image_size`` px images in training, or a ConfigError saying
    what to set (``library.check_images``); the own ResNets take any size from 8 px."""
    if split_arch(arch)[0] in LIBRARIES:
        check_images(arch, kwargs, image_size)
