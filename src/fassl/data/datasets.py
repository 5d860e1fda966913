"""The in-memory dataset every stage reads: uint8 image tensors and labels per split,
and the per-channel statistics that normalise them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fassl.data.files.store import StoreImages

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
        """The images ``index``; of a lazy set (streamed, stored) a view, nothing read."""
        if isinstance(self.images, torch.Tensor):
            return Split(self.images[index], self.labels[index])
        return Split(self.images.take(index), self.labels[index])

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


def _stats_sample(images: torch.Tensor | StoreImages) -> list[torch.Tensor]:
    """Chunks of the images: all of a tensor, a seeded sample of a stored set."""
    if isinstance(images, torch.Tensor):
        return list(images.split(4096))
    n = len(images)
    rows = np.sort(np.random.default_rng(0).permutation(n)[:STATS_SAMPLE])
    return list(images.batches(np.array_split(rows, max(1, len(rows) // 256))))


def channel_stats(images: torch.Tensor | StoreImages) -> tuple[Triple, Triple]:
    """Per-channel mean and std in [0, 1], accumulated in float64 chunks to bound memory.

    A memory-mapped set is summarised by a seeded sample of STATS_SAMPLE images.
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
