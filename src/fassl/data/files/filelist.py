"""Explicit lists of image files decoded to ImageSets and Splits (held or streamed).

Unlike a folder, whose images are whatever lies below it, a list names each image (a
published split, splits/sdclr.py; Tiny-ImageNet's layout), so a missing or unreadable image is
an error rather than a skipped file. A list has an image store of its own (files/store.py),
named by its files, so a list of 12k ImageNet images never lists the 1.3M files around
it, and a changed file re-decodes its own shard.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fassl.data.datasets import Split
from fassl.data.files import cache
from fassl.data.files.decode import ImageSet
from fassl.data.files.store import StoreImages, build_store, held_or_mapped, store_folder
from fassl.errors import DataError


@dataclass
class FileList:
    """Files relative to ``root`` with their labels (int64, -1 unknown) and class names."""

    root: Path
    files: list[str]
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.files)

    def take(self, idx: np.ndarray) -> FileList:
        return FileList(self.root, [self.files[i] for i in idx], self.labels[idx], self.classes)


def list_key(kind: str, files: FileList) -> str:
    """What names a list's own store: its kind and its files (their order too)."""
    blob = json.dumps([kind, files.files], separators=(",", ":")).encode()
    return f"{kind}-" + hashlib.sha256(blob).hexdigest()[:16]


def decode_list(
    files: FileList,
    image_size: int,
    cache_dir: str,
    kind: str,
    max_memory_gb: float = 8.0,
    workers: int = 0,
) -> ImageSet:
    """Every listed image, in list order, through the list's image store (decoded once;
    held in memory when small, memory-mapped otherwise); any failure raises."""
    base = cache.cache_base(cache_dir)
    folder = store_folder(base, files.root, image_size, list_key(kind, files))
    built = build_store(folder, files.root, files.files, image_size, workers)
    cache.tag_cache(folder.parent)
    failed = [(i.files[r], why) for i in built.infos for r, why in sorted(i.failed.items())]
    if failed:
        named = "; ".join(f"{p} ({why})" for p, why in failed[:5])
        raise DataError(f"{kind}: every listed image must decode; {len(failed)} did not: {named}")
    images = StoreImages.open(built, image_size, workers)
    labels = files.labels.astype(np.int64)
    return ImageSet(held_or_mapped(images, max_memory_gb), labels, files.classes, [], files.files)


def to_split(
    files: FileList, image_size: int, cache_dir: str, max_memory_gb: float = 8.0, workers: int = 0
) -> Split:
    """A Split of the listed images: in memory when small, memory-mapped otherwise."""
    labels = torch.from_numpy(files.labels.astype(np.int64))
    if not len(files):
        return Split(torch.empty(0, 3, image_size, image_size, dtype=torch.uint8), labels)
    data = decode_list(files, image_size, cache_dir, "list", max_memory_gb, workers)
    if isinstance(data.images, StoreImages):
        return Split(data.images, labels)  # type: ignore[arg-type]
    return Split(torch.from_numpy(np.ascontiguousarray(data.images)), labels)
