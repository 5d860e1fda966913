"""Frozen-backbone feature extraction and the choice of autocast precision."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from fassl.data.bundle import normalize_images

_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_bf16_units() -> bool:
    """True when the CPU multiplies bf16 matrices natively (AMX or AVX512-BF16).

    Without such units bf16 autocast on the CPU is emulated and slower than fp32.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux, or no procfs: assume no native bf16
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return any(flag in flags for flag in _BF16_CPU_FLAGS)
    return False


def resolve_autocast(device: torch.device | str, precision: str) -> torch.dtype | None:
    """Map a precision setting (auto | bf16 | fp32) to an autocast dtype, None = fp32."""
    device = torch.device(device)
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_bf16_units() else None
    return None


def autocast_context(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[None]:
    """Autocast on ``device`` with ``dtype``; a no-op context when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode (frozen BN statistics) and restore its mode on exit."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def prepare_batch(
    images: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
) -> torch.Tensor:
    """uint8 batch -> standardised float32 on ``device`` (channels_last on CUDA)."""
    x = normalize_images(images.to(device, non_blocking=True), mean, std)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def backbone_forward(
    backbone: nn.Module, x: torch.Tensor, autocast_dtype: torch.dtype | None
) -> torch.Tensor:
    """Features of a prepared batch as float32 (N, D), without autograd."""
    with autocast_context(x.device, autocast_dtype):
        feats = backbone(x)
    return feats.float().flatten(1)


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    batch_size: int = 512,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Features of uint8 (N, 3, H, W) images: float32 (N, D) on the CPU.

    The backbone runs in eval mode (BN uses its running statistics) and gets its
    previous mode back afterwards. An empty input yields (0, D): one zero image is
    run to learn D, so callers can treat empty splits like any other.
    """
    device = torch.device(device)
    with eval_mode(backbone):
        if images.shape[0] == 0:
            probe = torch.zeros((1, *images.shape[1:]), dtype=torch.uint8)
            dim = backbone_forward(
                backbone, prepare_batch(probe, mean, std, device), autocast_dtype
            ).shape[1]
            return torch.empty(0, dim)
        chunks = []
        for start in range(0, images.shape[0], batch_size):
            x = prepare_batch(images[start : start + batch_size], mean, std, device)
            chunks.append(backbone_forward(backbone, x, autocast_dtype).cpu())
    return torch.cat(chunks)
