"""Frozen-network feature extraction: uint8 images in, float32 features out.

Below training and evaluation: the training loop embeds its dataset with it (stage 2
banks, monitors), evaluation extracts probe features with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from tqdm import tqdm

from fassl.runtime import Runtime


def normalize_images(
    images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 standardised with per-channel mean and std."""
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255.0 - m) / s


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
    memory_format: torch.memory_format | None = None,
) -> torch.Tensor:
    """uint8 batch -> standardised float32 on ``device``, in ``memory_format`` (None:
    as it comes; callers pass ``Runtime.memory_format_for`` of the network it feeds)."""
    x = normalize_images(images.to(device, non_blocking=True), mean, std)
    if memory_format is not None:
        x = x.contiguous(memory_format=memory_format)
    return x


@torch.no_grad()
def backbone_forward(
    backbone: nn.Module | Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, rt: Runtime
) -> torch.Tensor:
    """Features of a prepared batch as float32 (N, D), without autograd."""
    with rt.autocast():
        feats = backbone(x)
    return feats.float().flatten(1)


@torch.no_grad()
def extract_features(
    net: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    rt: Runtime,
    batch_size: int = 512,
    memory_format: torch.memory_format | None = None,
) -> torch.Tensor:
    """Features of uint8 (N, 3, H, W) images through ``net``: float32 (N, D) on the CPU.

    A module runs in eval mode (BN uses its running statistics) and gets its previous
    mode back afterwards; a plain function (e.g. a method's teacher feature) is the
    caller's to put in eval mode. An empty input yields (0, D): one zero image is run to
    learn D, so callers can treat empty splits like any other. ``memory_format``
    defaults to the layout rule's answer for a module (``Runtime.memory_format_for``),
    contiguous for a plain function.
    """
    device = rt.device
    if memory_format is None and isinstance(net, nn.Module):
        memory_format = rt.memory_format_for(net)
    mode = eval_mode(net) if isinstance(net, nn.Module) else contextlib.nullcontext()
    with mode:
        if images.shape[0] == 0:
            probe = torch.zeros((1, *images.shape[1:]), dtype=torch.uint8)
            x = prepare_batch(probe, mean, std, device, memory_format)
            return torch.empty(0, backbone_forward(net, x, rt).shape[1])
        chunks = []
        for start in range(0, images.shape[0], batch_size):
            x = prepare_batch(images[start : start + batch_size], mean, std, device, memory_format)
            chunks.append(backbone_forward(net, x, rt).cpu())
    return torch.cat(chunks)


PROGRESS_CHUNK = 4096  # images read, embedded and handed on at a time


def image_chunks(images: torch.Tensor, chunk: int | None = None) -> Iterator[torch.Tensor]:
    """``images[start : start + chunk]`` in order: a uint8 tensor is sliced, a lazily
    decoded set (``images.batches``, e.g. a streamed split) decodes the next chunks
    while this one is embedded; never all images at once (default chunk: PROGRESS_CHUNK)."""
    n = int(images.shape[0])
    chunk = chunk or PROGRESS_CHUNK
    starts = range(0, n, chunk)
    batches = getattr(images, "batches", None)
    if callable(batches):
        yield from batches(slice(s, s + chunk) for s in starts)
        return
    for start in starts:
        yield images[start : start + chunk]


def feature_chunks(
    net: nn.Module,
    images: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    rt: Runtime,
    batch_size: int = 512,
    progress: bool = True,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, float32 features on the CPU) of each chunk of ``images``, in order, with
    a progress bar: what a writer needs to store features of any number of images in
    bounded memory. Each chunk is the probes' own extraction (``extract_features``), so
    the rows are exactly the features a probe sees for the same images."""
    net = net.to(rt.device)
    n = int(images.shape[0])
    start = 0
    with tqdm(total=n, unit="img", desc="features", disable=not progress) as bar:
        for part in image_chunks(images):
            yield start, extract_features(net, part, mean, std, rt, batch_size)
            start += int(part.shape[0])
            bar.update(int(part.shape[0]))


def embed_images(
    net: nn.Module,
    images: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    rt: Runtime,
    batch_size: int = 512,
    progress: bool = True,
) -> torch.Tensor:
    """``extract_features`` of any number of images with a progress bar: float32 (N, D) on
    the CPU, read a chunk at a time (``feature_chunks``); no images give (0, D)."""
    if int(images.shape[0]) == 0:
        return extract_features(net.to(rt.device), images, mean, std, rt, batch_size)
    chunks = [f for _, f in feature_chunks(net, images, mean, std, rt, batch_size, progress)]
    return torch.cat(chunks)
