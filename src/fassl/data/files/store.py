"""The image store: a folder's images decoded once into shards on disk, read memory-mapped.

A folder of any size trains without holding its images in memory. Up to
``FIXED_MAX_SIZE`` px a shard is a ``.npy`` file of fixed-size uint8 (n, 3, S, S)
records, opened with ``numpy.load(..., mmap_mode="r")``, so every process on a machine
(the ranks of a torchrun, the loader of a tool) reads the same pages of the operating
system's cache, and a batch costs a copy of its own rows. Above it (224 px: 147 KiB an
image decoded) a shard holds each image resized and centre-cropped as a JPEG of quality
``JPEG_QUALITY`` (several times fewer bytes; lossy, as FFCV's default ``jpg`` mode,
quality 90), memory-mapped the same way and decoded by loader worker processes while the
step runs (``StoreImages.batches``). Random access by image index keeps the project's own
seeded, rank-sliced order and its per-image state (FASSL's weights, BCL's momentum).

Shards are cut where the sorted file list has a path whose hash is 0 modulo
``SHARD_AVERAGE`` (or at ``SHARD_MAX`` files): the cut points depend on the paths alone,
so adding, removing or touching a file re-decodes its own shard only. A shard's name is
the hash of its files' paths, sizes and modification times, the image size and the
store's version; shards no longer named by the folder are removed when it is opened.

One process builds at a time (a lock file beside the shards): the ranks of a run, or two
runs sharing a cache, wait while the first decodes, then read what it wrote. Decoding runs
on ``data.workers`` processes (all cores by default) with a progress bar; pixels are
``decode.decode_chunk``'s, the same as the in-memory path's.

Why numpy and not a streaming-dataset library: see docs/datasets.md ("Large
collections"): the project needs random access by index in its own order, which
litdata's and mosaicml-streaming's readers serve through their own sampler and chunk
cache; a memory-mapped array is both the random access and the shared cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import multiprocessing
import os
import signal
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from fassl.data.files.decode import MAX_NAMED_FILES, Decoded, decode_chunk, plural
from fassl.errors import printable
from fassl.files import set_output_mode

STORE_VERSION = 1  # bump when the records' layout or the decoded pixels change
# A store whose decoded images take at most this much (and data.max_memory_gb) is read
# into memory, where a step indexes one tensor (CIFAR-10 at 32 px: 150 MiB); a larger one
# stays memory-mapped, one copy in the page cache for every process of the machine.
IN_MEMORY_BYTES = 1 << 30
FIXED_MAX_SIZE = 96  # px: fixed uint8 records up to this size, JPEG records above
JPEG_QUALITY = 95
SHARD_AVERAGE = 4096  # files a shard holds on average (a cut at hash % this == 0)
SHARD_MAX = 16384  # and at most
CHUNK = 64  # files a decoding task takes
# what a decoded image's pixels become once its record is written (a view would keep them)
WRITTEN = np.zeros(0, dtype=np.uint8)
SHARD_SUFFIX = ".npy"  # fixed records (n, 3, S, S), or the JPEG records' bytes end to end
INFO_SUFFIX = ".json"


def default_workers(workers: int) -> int:
    """data.workers, or up to 8 CPU cores when it is 0."""
    return workers or min(8, os.cpu_count() or 1)


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


def store_folder(cache_base: Path, root: Path, image_size: int, listing: str = "") -> Path:
    """Where the store of ``root`` at ``image_size`` lives inside the cache folder;
    ``listing`` names a list of files below ``root`` that has a store of its own (a
    folder's store holds what lies below it, and drops the shards of files gone)."""
    key = f"{Path(root).absolute()}|{image_size}|{listing}"
    tag = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return Path(cache_base) / "store" / f"{Path(root).name[:40]}-{image_size}px-{tag}"


def held_or_mapped(images: StoreImages, max_memory_gb: float) -> np.ndarray | StoreImages:
    """A store's images read into memory when they are small (IN_MEMORY_BYTES and
    ``data.max_memory_gb``), else the memory-mapped store itself."""
    if images.nbytes <= min(IN_MEMORY_BYTES, max_memory_gb * 2**30):
        return images.load()
    return images


def _path_hash(rel: str) -> int:
    raw = rel.encode("utf-8", "surrogateescape")  # names that are not UTF-8 too
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")


def shard_bounds(files: Sequence[str]) -> list[tuple[int, int]]:
    """[start, stop) of each shard of the sorted ``files``: cut after a path whose hash is
    0 modulo SHARD_AVERAGE, or after SHARD_MAX files."""
    bounds, start = [], 0
    for i, rel in enumerate(files):
        if _path_hash(rel) % SHARD_AVERAGE == 0 or i + 1 - start >= SHARD_MAX:
            bounds.append((start, i + 1))
            start = i + 1
    if start < len(files):
        bounds.append((start, len(files)))
    return bounds


def _entry(root: str, rel: str) -> list[Any]:
    # plain strings: a Path per file costs more than its stat over a million files
    st = os.stat(os.path.join(root, rel))
    return [rel, st.st_size, st.st_mtime_ns]


def shard_name(entries: Sequence[Sequence[Any]], image_size: int) -> str:
    """The name of the shard holding these files: what its records depend on."""
    payload = json.dumps([STORE_VERSION, image_size, entries], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


@dataclass
class ShardInfo:
    """What a shard's json records: its files, the ones that failed and what decoding did."""

    files: list[str]
    failed: dict[int, str] = field(default_factory=dict)  # row -> reason
    conversions: dict[str, int] = field(default_factory=dict)
    resized: int = 0
    rotated: int = 0
    offsets: list[int] | None = None  # JPEG records: where each one's bytes start and end

    @classmethod
    def of(cls, files: list[str], decoded: list[Decoded]) -> ShardInfo:
        ok = [d for d in decoded if d.pixels is not None]
        return cls(
            files,
            {i: d.error for i, d in enumerate(decoded) if d.pixels is None},
            dict(Counter(d.conversion for d in ok if d.conversion)),
            sum(1 for d in ok if d.resized),
            sum(1 for d in ok if d.rotated),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STORE_VERSION,
            "files": self.files,
            "failed": {str(k): v for k, v in self.failed.items()},
            "conversions": self.conversions,
            "resized": self.resized,
            "rotated": self.rotated,
            "offsets": self.offsets,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ShardInfo:
        failed = {int(k): str(v) for k, v in raw["failed"].items()}
        return cls(
            list(raw["files"]),
            failed,
            dict(raw["conversions"]),
            raw["resized"],
            raw["rotated"],
            raw.get("offsets"),
        )


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One builder at a time: the others wait here, then find its shards written."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_info(path: Path) -> ShardInfo | None:
    try:
        raw = json.loads(path.read_text())
        if raw.get("version") != STORE_VERSION:
            return None
        return ShardInfo.from_json(raw)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # absent or damaged: the shard is decoded again


def encoded(image_size: int) -> bool:
    """Whether images of this size are stored as JPEG records (else fixed uint8 ones)."""
    return image_size > FIXED_MAX_SIZE


def encode_jpeg(pixels: np.ndarray) -> bytes:
    """A (3, S, S) uint8 image as JPEG bytes (quality JPEG_QUALITY, 4:4:4 chroma)."""
    out = io.BytesIO()
    Image.fromarray(pixels.transpose(1, 2, 0)).save(
        out, "JPEG", quality=JPEG_QUALITY, subsampling=0
    )
    return out.getvalue()


def decode_jpeg(data: np.ndarray | bytes) -> np.ndarray:
    """A JPEG record back to uint8 (3, S, S)."""
    with Image.open(io.BytesIO(bytes(data))) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)


def _write_shard(
    folder: Path,
    name: str,
    root: Path,
    files: list[str],
    image_size: int,
    pool: Any,
    bar: tqdm,
) -> ShardInfo:
    """Decode ``files`` into ``<name>.npy`` (records in file order; a file that failed
    has zeros, or no bytes) and ``<name>.json``; each is written to a temporary name and
    renamed, the json last: it marks a complete shard."""
    tmp = folder / f".{name}.{os.getpid()}.tmp.npy"
    jpeg = encoded(image_size)
    records: Any = None
    if not jpeg:
        records = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(files), 3, image_size, image_size)
        )
    decoded: list[Decoded] = []
    blobs: list[bytes] = []
    chunks = [[root / f for f in files[i : i + CHUNK]] for i in range(0, len(files), CHUNK)]
    tasks = [(c, image_size, jpeg) for c in chunks]
    parts: Iterable[list[tuple[Decoded, bytes]]]
    parts = map(_decode_task, tasks) if pool is None else pool.imap(_decode_task, tasks)
    try:
        for part in parts:
            for d, blob in part:
                if records is not None and d.pixels is not None:
                    records[len(decoded)] = d.pixels
                    d.pixels = WRITTEN  # only whether it decoded is kept, not its pixels
                decoded.append(d)
                blobs.append(blob)
            bar.update(len(part))
        if records is not None:
            records.flush()
            del records
        else:
            np.save(tmp, np.frombuffer(b"".join(blobs), dtype=np.uint8))
        set_output_mode(tmp)
        os.replace(tmp, folder / f"{name}{SHARD_SUFFIX}")
    finally:
        tmp.unlink(missing_ok=True)
    info = ShardInfo.of(files, decoded)
    if jpeg:
        info.offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).tolist()
    info_tmp = folder / f".{name}.{os.getpid()}.tmp.json"
    info_tmp.write_text(json.dumps(info.to_json()))
    set_output_mode(info_tmp)
    os.replace(info_tmp, folder / f"{name}{INFO_SUFFIX}")
    return info


def _worker_start() -> None:
    """A decoding worker ends on SIGTERM and leaves Ctrl-C to the process that started
    it: a handler inherited from the command (SIGTERM as an interrupt) would keep a
    worker alive, waiting for tasks, when the pool ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _decode_task(args: tuple[list[Path], int, bool]) -> list[tuple[Decoded, bytes]]:
    """Decode a chunk; with ``jpeg``, each image's record as JPEG bytes (pixels dropped)."""
    paths, size, jpeg = args
    out = []
    for d in decode_chunk(paths, size):
        blob = b""
        if jpeg and d.pixels is not None:
            blob, d.pixels = encode_jpeg(d.pixels), WRITTEN  # only the bytes travel back
        out.append((d, blob))
    return out


@dataclass
class Built:
    """An opened store: its shards in file order and what building it found."""

    folder: Path
    names: list[str]
    infos: list[ShardInfo]
    decoded: int  # images decoded by this call (0: every shard was there)
    removed: int  # stale shards removed

    def report(self, root: Path, image_size: int) -> list[str]:
        """Report lines as the in-memory path writes them (conversions, skipped files)."""
        conversions: Counter[str] = Counter()
        for info in self.infos:
            conversions.update(info.conversions)
        lines = [
            f"converted {plural(n, f'{k} image')} to RGB" for k, n in sorted(conversions.items())
        ]
        rotated = sum(i.rotated for i in self.infos)
        resized = sum(i.resized for i in self.infos)
        if rotated:
            lines.append(f"turned {plural(rotated, 'image')} upright (EXIF orientation)")
        if resized:
            lines.append(
                f"resized {plural(resized, 'image')} to {image_size}x{image_size} "
                "(shorter side, then centre crop)"
            )
        skipped = [(i.files[r], why) for i in self.infos for r, why in sorted(i.failed.items())]
        if skipped:
            named = "; ".join(f"{p} ({why})" for p, why in skipped[:MAX_NAMED_FILES])
            more = len(skipped) - MAX_NAMED_FILES
            tail = f"; and {more:,} more" if more > 0 else ""
            lines.append(
                printable(
                    f"skipped {plural(len(skipped), 'unreadable image file')} in {root}: "
                    f"{named}{tail}"
                )
            )
        return lines

    def ok_rows(self) -> tuple[np.ndarray, list[str]]:
        """Rows of the decoded images in the shards' concatenation, and their files."""
        rows, files, offset = [], [], 0
        for info in self.infos:
            good = [r for r in range(len(info.files)) if r not in info.failed]
            rows.append(np.asarray(good, dtype=np.int64) + offset)
            files.extend(info.files[r] for r in good)
            offset += len(info.files)
        return (np.concatenate(rows) if rows else np.zeros(0, np.int64)), files


def build_store(
    folder: Path,
    root: Path,
    files: Sequence[str],
    image_size: int,
    workers: int = 0,
    progress: bool = True,
) -> Built:
    """Bring the store of ``files`` (sorted, relative to ``root``) up to date and open it:
    decode the shards that are missing, remove those that no longer belong."""
    files = list(files)
    root = Path(root)
    root_name = os.fspath(root)
    bounds = shard_bounds(files)
    with _locked(folder):
        names, todo = [], []
        infos: list[ShardInfo | None] = []
        for start, stop in bounds:
            entries = [_entry(root_name, rel) for rel in files[start:stop]]
            name = shard_name(entries, image_size)
            info = _read_info(folder / f"{name}{INFO_SUFFIX}")
            if info is not None and not (folder / f"{name}{SHARD_SUFFIX}").is_file():
                info = None
            names.append(name)
            infos.append(info)
            if info is None:
                todo.append(len(names) - 1)
        missing = sum(bounds[i][1] - bounds[i][0] for i in todo)
        if todo:
            n_workers = default_workers(workers) if workers != 1 else 1
            pool = None
            if n_workers > 1:
                pool = multiprocessing.get_context().Pool(n_workers, initializer=_worker_start)
            bar = tqdm(
                total=missing,
                desc=f"storing {root.name}",
                unit="img",
                disable=None if progress else True,  # None: shown on a terminal only
                dynamic_ncols=True,
            )
            try:
                for i in todo:
                    start, stop = bounds[i]
                    infos[i] = _write_shard(
                        folder, names[i], root, files[start:stop], image_size, pool, bar
                    )
                if pool is not None:  # every task done: the workers end on their own
                    pool.close()
                    pool.join()
            finally:
                bar.close()
                if pool is not None:
                    pool.terminate()
        keep = set(names)
        removed = 0
        for path in folder.glob(f"*{SHARD_SUFFIX}"):
            if path.stem not in keep and not path.name.startswith("."):
                path.unlink(missing_ok=True)
                (folder / f"{path.stem}{INFO_SUFFIX}").unlink(missing_ok=True)
                removed += 1
        for path in folder.glob(".*.tmp.*"):  # of builders killed before their rename
            path.unlink(missing_ok=True)
    return Built(folder, names, [i for i in infos if i is not None], missing, removed)


class StoreImages:
    """The store's images as a uint8 (N, 3, S, S) tensor-like, read from memory-mapped
    shards::

        images[idx]       the images as a uint8 tensor (an int gives (3, S, S))
        images.take(idx)  a view of those images (nothing read)
        images.batches(index_batches)   images[b] for each batch b
        len(images), images.shape, images.dtype, images.ndim, images.device
        images.load()     every image in memory, as a uint8 numpy array

    Pickled without its open maps (a worker process opens its own).
    """

    dtype = torch.uint8
    ndim = 4

    def __init__(
        self,
        shards: Sequence[str | Path],
        counts: Sequence[int],
        image_size: int,
        rows: np.ndarray,
        jpeg_offsets: Sequence[Sequence[int]] | None = None,
        workers: int = 0,
    ) -> None:
        self.shards = [os.fspath(p) for p in shards]
        self.counts = [int(c) for c in counts]
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.image_size = image_size
        self.rows = np.asarray(rows, dtype=np.int64)
        # JPEG records: per shard, where each record's bytes start (n + 1 entries)
        self.jpeg_offsets = None
        if jpeg_offsets is not None:
            self.jpeg_offsets = [np.asarray(o, dtype=np.int64) for o in jpeg_offsets]
        self.workers = default_workers(workers)
        self._maps: list[np.ndarray] | None = None

    @classmethod
    def open(cls, built: Built, image_size: int, workers: int = 0) -> StoreImages:
        rows, _ = built.ok_rows()
        shards = [built.folder / f"{n}{SHARD_SUFFIX}" for n in built.names]
        jpeg = [i.offsets or [0] for i in built.infos] if encoded(image_size) else None
        counts = [len(i.files) for i in built.infos]
        return cls(shards, counts, image_size, rows, jpeg, workers)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), 3, self.image_size, self.image_size))

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def nbytes(self) -> int:
        return len(self.rows) * 3 * self.image_size * self.image_size

    def __repr__(self) -> str:
        return f"StoreImages({tuple(self.shape)}, {len(self.shards)} shards)"

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__) | {"_maps": None}

    def _open(self) -> list[np.ndarray]:
        if self._maps is None:
            self._maps = [np.load(p, mmap_mode="r") for p in self.shards]
        return self._maps

    def take(self, index: Any) -> StoreImages:
        view = StoreImages.__new__(StoreImages)
        view.__dict__ = dict(self.__dict__)
        view.rows = self.rows[positions(index, len(self))]
        return view

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """The records of store rows ``rows`` (any order), as one uint8 array."""
        maps = self._open()
        out = np.empty((len(rows), 3, self.image_size, self.image_size), dtype=np.uint8)
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        for s in np.unique(shard):
            at = np.flatnonzero(shard == s)
            local = rows[at] - self.offsets[s]
            order = np.argsort(local, kind="stable")  # ascending reads: the disk's order
            if self.jpeg_offsets is None:
                out[at[order]] = maps[s][local[order]]
                continue
            starts = self.jpeg_offsets[s]
            for j, r in zip(at[order], local[order], strict=True):
                out[j] = decode_jpeg(maps[s][starts[r] : starts[r + 1]])
        return out

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, int | np.integer):
            return self[[int(index)]][0]
        return torch.from_numpy(self.read_rows(self.rows[positions(index, len(self))]))

    def batches(self, index_batches: Iterable[Any], prefetch: int = 2) -> Iterator[torch.Tensor]:
        """``self[b]`` for each index batch ``b``, in order. JPEG records are decoded by
        ``workers`` loader processes, ``prefetch`` batches each ahead of the caller."""
        if self.jpeg_offsets is None or self.workers <= 1:
            for index in index_batches:
                yield self[index]
            return
        loader = torch.utils.data.DataLoader(
            _Batches(self, list(index_batches)),
            batch_size=None,
            num_workers=self.workers,
            prefetch_factor=prefetch,
            worker_init_fn=_loader_start,
        )
        yield from loader

    def load(self) -> np.ndarray:
        """Every image as one in-memory array (a set small enough to hold)."""
        return self.read_rows(self.rows)

    def close(self) -> None:
        self._maps = None


class _Batches(torch.utils.data.Dataset):
    """Index batches as a map-style dataset: item i is batch i's images (a loader's
    worker decodes a whole batch)."""

    def __init__(self, images: StoreImages, index_batches: list[Any]) -> None:
        self.images, self.index_batches = images, index_batches

    def __len__(self) -> int:
        return len(self.index_batches)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[self.index_batches[i]]


def _loader_start(worker: int) -> None:
    _worker_start()
    torch.set_num_threads(1)  # decoding is PIL's; the step keeps the cores
