"""The in-memory dataset every stage reads: uint8 image tensors and labels per split,
and the per-channel statistics that normalise them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fassl.data.streaming import StreamingImages

# The paper's class groups by training frequency (the one spelling everywhere)
GROUPS = ("frequent", "medium", "rare")
STATS_SAMPLE = 2048  # images of a streamed split that its channel statistics are drawn from

Triple = tuple[float, float, float]


@dataclass
class Split:
    """Images as uint8 (N, 3, H, W) on the CPU and int64 labels (N,), -1 where unknown."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 (N, 3, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must have one entry per image")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index])

    @staticmethod
    def empty(image_size: int) -> Split:
        return Split(
            torch.empty(0, 3, image_size, image_size, dtype=torch.uint8),
            torch.empty(0, dtype=torch.long),
        )


@dataclass
class LongTailData:
    """A dataset under the long-tailed protocol (see docs/method.md of the project).

    ``pretrain`` is the long-tailed subset D_i whose labels are never seen by training
    (kept for analysis only); ``pool`` is the balanced probe-train pool, ``few_shot`` its
    nested subset, ``val`` the held-out images for choosing the probe's epoch.
    """

    name: str
    classes: list[str]
    pretrain: Split
    pool: Split
    few_shot: Split
    val: Split
    test: Split
    class_counts: list[int]  # images per class in ``pretrain``
    groups: dict[str, list[int]]  # "frequent" / "medium" / "rare" -> class ids
    mean: tuple[float, float, float]  # per-channel statistics of ``pretrain``, in [0, 1]
    std: tuple[float, float, float]
    labeled: bool = True
    notes: list[str] = field(default_factory=list)  # what loading converted or skipped

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.pretrain.images.shape[-1])


def _stats_sample(images: torch.Tensor | StreamingImages) -> list[torch.Tensor]:
    """Chunks of the images: all of a tensor, a seeded sample of a streamed set."""
    if isinstance(images, torch.Tensor):
        return list(images.split(4096))
    n = len(images)
    rows = np.sort(np.random.default_rng(0).permutation(n)[:STATS_SAMPLE])
    return list(images.batches(np.array_split(rows, max(1, len(rows) // 256))))


def channel_stats(images: torch.Tensor | StreamingImages) -> tuple[Triple, Triple]:
    """Per-channel mean and std in [0, 1], accumulated in float64 chunks to bound memory.

    A streamed set is summarised by a seeded sample of STATS_SAMPLE images.
    """
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    count = 0
    for chunk in _stats_sample(images):
        x = chunk.to(torch.float64).div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / max(count, 1)
    std = (squares / max(count, 1) - mean.square()).clamp_min(1e-12).sqrt()
    (m0, m1, m2), (s0, s1, s2) = mean.tolist(), std.tolist()
    return (m0, m1, m2), (s0, s1, s2)


def normalize_images(
    images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 standardised with per-channel mean and std."""
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255.0 - m) / s


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
