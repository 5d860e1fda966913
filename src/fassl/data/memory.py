"""What a run holds in memory per process, checked against what the machine has.

The images of a dataset are held in memory only when small (``files.store``: a larger
set stays memory-mapped, shared by every process through the page cache, and takes no
private memory); what else grows with the collection is one float32 feature per image
(the bank ``Trainer.embed`` extracts for stage 2's weight and the monitors) and the per-
image state of BCL and GH (a few floats). A run is refused before it trains only when
that, for every process on the machine, exceeds the memory the kernel reports available,
with a line saying what would fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from fassl.data.datasets import LongTailData
from fassl.errors import DataError

SPLITS = ("pretrain", "pool", "few_shot", "val", "test")


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (None where there is none: not Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def local_processes() -> int:
    """Processes of this run on this machine (torchrun's LOCAL_WORLD_SIZE, else 1)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))


@dataclass
class Held:
    """Bytes a process holds, by what holds them."""

    images: int  # decoded images held in memory (not the memory-mapped ones)
    features: int  # one float32 feature per training image
    mapped: int  # memory-mapped images (the page cache's, shared: not counted)

    @property
    def total(self) -> int:
        return self.images + self.features


def held(data: LongTailData, feature_dim: int) -> Held:
    """What a run over ``data`` holds per process, with features of ``feature_dim``."""
    images = mapped = 0
    seen: set[int] = set()
    for name in SPLITS:
        split = getattr(data, name).images
        if id(split) in seen:
            continue
        seen.add(id(split))
        if isinstance(split, torch.Tensor):
            images += split.numel() * split.element_size()
        else:
            mapped += len(split) * 3 * data.image_size**2
    return Held(images, len(data.pretrain) * feature_dim * 4, mapped)


def check_fits(data: LongTailData, feature_dim: int, available: int | None = None) -> Held:
    """``held(...)``; a DataError when every local process's share exceeds the memory
    available, naming what holds it and what would fit."""
    need = held(data, feature_dim)
    available = available_bytes() if available is None else available
    processes = local_processes()
    if available is None or need.total * processes <= available:
        return need
    gib = 2**30
    fixes = []
    if need.images:
        fixes.append(
            "a smaller data.max_memory_gb (the images then stay memory-mapped, shared by "
            "the processes)"
        )
    fixes.append("a smaller data.image_size" if need.images else "a narrower model.width")
    if processes > 1:
        fixes.append("fewer processes on this machine")
    raise DataError(
        f"{data.name}: this run would hold {need.total / gib:.2f} GiB in each of "
        f"{processes} process{'es' if processes > 1 else ''} (images in memory "
        f"{need.images / gib:.2f} GiB, one {feature_dim}-dim feature per training image "
        f"{need.features / gib:.2f} GiB), more than the {available / gib:.2f} GiB this "
        f"machine has available: use {', or '.join(fixes)}"
    )
