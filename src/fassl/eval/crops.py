"""The probe's augmentation: RandomCrop(size, padding) + horizontal flip on whole batches,
on the images' device (SDCLR's augmented probe, ``probe.variant=sdclr``)."""

from __future__ import annotations

import torch


def random_crop_flip(
    images: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """RandomCrop(size, padding) + horizontal flip for a whole batch (the probe's augmentation).

    Each image gets its own offset and flip; zero padding as in torchvision's default.
    """
    n, dev = images.shape[0], images.device
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
    flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
    return crop_flip_at(images, dy, dx, flip, padding)


def crop_flip_at(
    images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, padding: int
) -> torch.Tensor:
    """RandomCrop(padding) + horizontal flip at given per-image row / column offsets (in
    [0, 2 padding]) and flips (bool), on the images' device: ``random_crop_flip`` with
    its draws made beforehand."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    dev = images.device
    rows = dy.view(n, 1) + torch.arange(h, device=dev).view(1, h)  # (n, h)
    cols = torch.arange(w, device=dev).view(1, w).expand(n, w)
    cols = torch.where(flip.view(n, 1), w - 1 - cols, cols) + dx.view(n, 1)  # (n, w)
    batch = torch.arange(n, device=dev).view(n, 1, 1, 1)
    chan = torch.arange(images.shape[1], device=dev).view(1, -1, 1, 1)
    return padded[batch, chan, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
