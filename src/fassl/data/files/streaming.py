"""Images decoded on the fly, for splits too large to hold decoded in memory.

``StreamingImages`` stands in for the uint8 (N, 3, S, S) image tensor of a Split:

    images[idx]           idx an int, slice, list, numpy array or (long or bool) tensor:
                          the decoded uint8 images, (n, 3, S, S) (an int gives (3, S, S))
    len(images), images.shape, images.dtype (torch.uint8), images.ndim (4)
    images.take(idx)      a lazy view of those images (no decoding)
    images.batches(index_batches, prefetch=2)
                          yields images[b] for each index batch b, decoding the next
                          ``prefetch`` batches in the worker processes meanwhile
    images.close()        stops the worker processes (they also stop when it is collected)

Decoding is the in-memory path's (``decode.decode_chunk``: shorter side resized, centre
crop), so the two give identical pixels. A file that cannot be decoded raises
OSError naming it: a fixed-size split cannot skip an image half-way through training.
The worker pool is created on first use and is not pickled, so the object can be sent to
other processes, which start their own pool.
"""

from __future__ import annotations

import multiprocessing
import os
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fassl.data.files.decode import Decoded, decode_chunk

CHUNK = 32  # images per task sent to a worker


def _stack(paths: Sequence[str], decoded: Sequence[Decoded], size: int) -> np.ndarray:
    """The decoded chunk as one uint8 array; a file that failed raises, naming it."""
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for row, (path, image) in enumerate(zip(paths, decoded, strict=True)):
        if image.pixels is None:
            raise OSError(f"cannot decode {path}: {image.error}")
        out[row] = image.pixels
    return out


def default_workers(workers: int) -> int:
    """data.workers, or up to 8 CPU cores when it is 0."""
    return workers or min(8, os.cpu_count() or 1)


def streamed_splits(sizes: dict[str, int], image_size: int, budget_gb: float) -> set[str]:
    """Which splits to stream so that the decoded rest fits ``budget_gb``: largest first."""
    per_image = 3 * image_size * image_size
    budget = budget_gb * 1024**3
    total = sum(sizes.values()) * per_image
    streamed: set[str] = set()
    for name in sorted(sizes, key=lambda k: sizes[k], reverse=True):
        if total <= budget:
            break
        streamed.add(name)
        total -= sizes[name] * per_image
    return streamed


def positions(index: Any, n: int) -> list[int]:
    """Row numbers from an int / slice / list / numpy array / tensor index (bool masks too)."""
    if isinstance(index, slice):
        return list(range(n))[index]
    arr = index.cpu().numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
    if arr.dtype == np.bool_:
        if arr.shape != (n,):
            raise IndexError(f"boolean index of shape {arr.shape} for {n} images")
        return np.flatnonzero(arr).tolist()
    if arr.dtype.kind not in "iu":
        raise IndexError(f"images can be indexed by integers, not {arr.dtype}")
    flat = arr.reshape(-1).astype(np.int64)
    if flat.size and (flat.max() >= n or flat.min() < -n):
        raise IndexError(f"index out of range for {n} images")
    return (flat % max(n, 1)).tolist()


class StreamingImages:
    """A lazily decoded uint8 (N, 3, S, S) image set (see the module docstring)."""

    dtype = torch.uint8
    ndim = 4

    def __init__(self, paths: Sequence[str | Path], image_size: int, workers: int = 0) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self.image_size = image_size
        self.workers = default_workers(workers)
        self._pool: Any = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), 3, self.image_size, self.image_size))

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def __repr__(self) -> str:
        return f"StreamingImages({tuple(self.shape)}, workers={self.workers})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pool"] = None
        return state

    def take(self, index: Any) -> StreamingImages:
        rows = positions(index, len(self))
        return StreamingImages([self.paths[r] for r in rows], self.image_size, self.workers)

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, int | np.integer):
            return self[[int(index)]][0]
        rows = positions(index, len(self))
        return self._collect(self._submit(rows))

    def batches(self, index_batches: Iterable[Any], prefetch: int = 2) -> Iterator[torch.Tensor]:
        """Decode each batch of indices, keeping ``prefetch`` batches in flight."""
        pending: deque[list[tuple[list[str], Any]]] = deque()
        for index in index_batches:
            pending.append(self._submit(positions(index, len(self))))
            if len(pending) > prefetch:
                yield self._collect(pending.popleft())
        while pending:
            yield self._collect(pending.popleft())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    def _submit(self, rows: list[int]) -> list[tuple[list[str], Any]]:
        """Start decoding ``rows``: per chunk, its paths and the pool's async result (or
        the images decoded here)."""
        paths = [self.paths[r] for r in rows]
        chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
        if self.workers <= 1 or len(chunks) <= 1:
            return [(c, decode_chunk(c, self.image_size)) for c in chunks]
        pool = self._get_pool()
        return [(c, pool.apply_async(decode_chunk, (c, self.image_size))) for c in chunks]

    def _collect(self, parts: list[tuple[list[str], Any]]) -> torch.Tensor:
        arrays = [
            _stack(paths, done if isinstance(done, list) else done.get(), self.image_size)
            for paths, done in parts
        ]
        if not arrays:
            return torch.empty(0, 3, self.image_size, self.image_size, dtype=torch.uint8)
        return torch.from_numpy(np.concatenate(arrays))

    def _get_pool(self) -> Any:
        if self._pool is None:
            self._pool = multiprocessing.get_context().Pool(self.workers)
            weakref.finalize(self, self._pool.terminate)
        return self._pool
