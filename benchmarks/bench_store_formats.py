"""Random access by image index: the image store's memory-mapped records against litdata.

The training loop reads each batch by the indices of its own seeded, rank-sliced
permutation. This times exactly that read, a batch of ``--batch`` random indices, from
the same uint8 (3, S, S) records written two ways, in one run on one machine:

- a ``.npy`` shard opened with ``numpy.load(mmap_mode="r")`` (what ``fassl.data.files.store``
  writes up to 96 px), indexed with the sorted batch;
- litdata (``litdata.optimize`` then ``litdata.StreamingDataset``, item by item, as its
  ``__getitem__`` serves random access), when litdata is installed (``pip install litdata``;
  not a dependency of fassl).

Both read from the page cache after a first pass (warm) and once right after writing.

    python benchmarks/bench_store_formats.py --images 20000 --size 64
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _record(i: int, size: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (3, size, size), dtype=np.uint8)


def _litdata_item(i: int, size: int = 64) -> dict:
    return {"index": i, "image": _record(i, size)}


def batches(n: int, batch: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [np.sort(rng.choice(n, batch, replace=False)) for _ in range(count)]


def time_reads(read, index: list[np.ndarray]) -> float:
    """Images/s reading every batch of ``index`` (after one warm-up pass)."""
    for b in index:
        read(b)
    t0 = time.perf_counter()
    for b in index:
        read(b)
    return sum(len(b) for b in index) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=40)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fassl-formats-"))
    result: dict = {"command": "python benchmarks/bench_store_formats.py", **vars(args)}
    index = batches(args.images, args.batch, args.batches)
    try:
        t0 = time.perf_counter()
        records = np.lib.format.open_memmap(
            work / "shard.npy", "w+", np.uint8, (args.images, 3, args.size, args.size)
        )
        for i in range(args.images):
            records[i] = _record(i, args.size)
        records.flush()
        del records
        result["npy_write_img_per_s"] = args.images / (time.perf_counter() - t0)
        shard = np.load(work / "shard.npy", mmap_mode="r")
        result["npy_read_img_per_s"] = time_reads(lambda b: np.asarray(shard[b]), index)
        try:
            import litdata
        except ImportError:
            result["litdata"] = "not installed"
        else:
            from functools import partial

            t0 = time.perf_counter()
            litdata.optimize(
                fn=partial(_litdata_item, size=args.size),
                inputs=list(range(args.images)),
                output_dir=str(work / "lit"),
                chunk_bytes="64MB",
                num_workers=1,
            )
            result["litdata_write_img_per_s"] = args.images / (time.perf_counter() - t0)
            ds = litdata.StreamingDataset(str(work / "lit"))
            check = ds[int(index[0][0])]
            assert np.array_equal(np.asarray(check["image"]), _record(int(index[0][0]), args.size))
            result["litdata_read_img_per_s"] = time_reads(
                lambda b: np.stack([np.asarray(ds[int(i)]["image"]) for i in b]), index
            )
            result["litdata_version"] = litdata.__version__
            result["npy_over_litdata_read"] = (
                result["npy_read_img_per_s"] / result["litdata_read_img_per_s"]
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
