"""Explicit lists of image files decoded to ImageSets and Splits (held or streamed).

Unlike a folder, whose images are whatever lies below it, a list names each image (a
published split, splits/sdclr.py; Tiny-ImageNet's layout), so a missing or unreadable image is
an error rather than a skipped file. Decoded lists are cached like folders, keyed by the
listed files themselves (path, size, mtime), so a list of 12k ImageNet images never lists
the 1.3M files around it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fassl.data.datasets import Split
from fassl.data.files import cache
from fassl.data.files.decode import ImageSet, decode_files
from fassl.data.files.streaming import StreamingImages
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


def list_fingerprint(kind: str, files: FileList, image_size: int) -> str:
    """Hash of what decoding the list depends on: every listed file, labels, size, version."""
    stats = []
    for rel in files.files:
        st = os.stat(files.root / rel)
        stats.append([rel, st.st_size, st.st_mtime_ns])
    payload = {
        "kind": kind,
        "root": str(files.root),
        "files": stats,
        "labels": hashlib.sha256(files.labels.astype(np.int64).tobytes()).hexdigest(),
        "classes": files.classes,
        "image_size": image_size,
        "version": cache.FORMAT_VERSION,
    }
    blob = json.dumps(payload, separators=(",", ":")).encode()
    return "list-" + hashlib.sha256(blob).hexdigest()[:32]


def decode_list(files: FileList, image_size: int, cache_dir: str, kind: str) -> ImageSet:
    """Every listed image decoded (through the cache), in list order; any failure raises."""
    key = list_fingerprint(kind, files, image_size)
    hit = cache.load(cache_dir, key)
    if hit is not None:
        return hit
    data = decode_files(
        files.root, files.files, files.labels.tolist(), files.classes, image_size, []
    )
    if len(data) != len(files):
        skipped = [line for line in data.report if line.startswith("skipped")]
        raise DataError(f"{kind}: every listed image must decode; {'; '.join(skipped)}")
    cache.save(cache_dir, key, data)
    return data


def to_split(
    files: FileList, image_size: int, cache_dir: str, stream_workers: int | None = None
) -> Split:
    """A Split held in memory, or streamed (decoded on the fly) when ``stream_workers``."""
    labels = torch.from_numpy(files.labels.astype(np.int64))
    if not len(files):
        return Split(torch.empty(0, 3, image_size, image_size, dtype=torch.uint8), labels)
    if stream_workers is not None:
        paths = [files.root / f for f in files.files]
        streaming = StreamingImages(paths, image_size, stream_workers)
        return Split(streaming, labels)  # type: ignore[arg-type]
    data = decode_list(files, image_size, cache_dir, "list")
    return Split(torch.from_numpy(np.ascontiguousarray(data.images)), labels)
