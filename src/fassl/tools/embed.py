"""``fassl embed``: one feature vector per image, in a file any program can read.

Writes ``embeddings.npy`` (N x D, float32 or float16), ``index.csv`` (row, path, label:
row i of the array is the image on line i) and ``embeddings.json`` (checkpoint, feature,
the normalisation used, notes from loading the images). Images are read, embedded and
written a chunk at a time through a memory map, so any number of images fits in bounded
memory. float16 refuses features beyond its range (65504) unless ``--allow-overflow``
stores them as inf and counts them (``float16_overflow``).
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fassl.data.collection import Collection
from fassl.encoders import load_encoder
from fassl.errors import ToolError, printable
from fassl.features import feature_chunks
from fassl.files import OutputSet, check_space
from fassl.report import write_json
from fassl.runtime import Runtime

DTYPES = {"float32": np.float32, "float16": np.float16}
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504: larger values are stored as inf


@dataclass
class EmbedOptions:
    """How ``fassl embed`` runs: which output of the encoder, stored in which precision;
    ``allow_overflow``: write float16 infinities (counted in embeddings.json) rather than
    refuse when a feature exceeds float16's range."""

    feature: str = "backbone"  # backbone (what the probe reads) | projection
    dtype: str = "float32"  # float32 | float16
    batch_size: int = 512
    progress: bool = True
    allow_overflow: bool = False


def write_index(path: Path, coll: Collection) -> None:
    """index.csv: row, path, label (class name; empty without labels), in array order."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["row", "path", "label"])
        for i, name in enumerate(coll.paths):
            # names that are not valid UTF-8 as \xNN escapes, as in the run's notes
            w.writerow([i, printable(name), printable(coll.label_name(i))])


def overflowing(feats: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """Where a finite feature became inf when stored (beyond float16's range)."""
    return np.isinf(stored) & np.isfinite(feats)


def _overflow_error(coll: Collection, row: int, value: float) -> ToolError:
    return ToolError(
        f"--dtype float16: a feature of image {printable(coll.paths[row])} (row {row}) is "
        f"{value:.6g}, beyond float16's largest value {FLOAT16_MAX:.0f}, and would be "
        "written as inf: use --dtype float32, or --allow-overflow to write inf and count "
        "such values in embeddings.json"
    )


def write_embeddings(
    out: Path,
    chunks: Iterable[tuple[int, torch.Tensor]],
    coll: Collection,
    info: dict,
    allow_overflow: bool = False,
) -> tuple[list[str], dict]:
    """embeddings.npy (written chunk by chunk through a memory map: bounded memory
    whatever N), index.csv and embeddings.json into ``out``, renamed into place together
    once all are written; returns their names and embeddings.json's content.

    ``chunks``: (first row, float32 features) covering the rows of ``coll`` in order.
    A float16 value beyond 65504 refuses the whole set (nothing is written) unless
    ``allow_overflow``: then it is stored as inf and counted (``float16_overflow``).
    """
    dtype = DTYPES[info["dtype"]]
    n = len(coll)
    overflow = 0
    dim = 0
    with OutputSet(out) as files:
        tmp = files.path("embeddings.npy")
        array: np.ndarray | None = None
        for start, feats in chunks:
            values = feats.numpy()
            if array is None:
                dim = values.shape[1]
                needed = n * dim * np.dtype(dtype).itemsize
                check_space(out, needed, out / "embeddings.npy")
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n, dim))
            with np.errstate(over="ignore"):  # counted below, not warned about
                stored = values.astype(dtype)
            bad = overflowing(values, stored)
            if bad.any() and not allow_overflow:
                row, col = (int(i[0]) for i in np.nonzero(bad))
                raise _overflow_error(coll, start + row, float(values[row, col]))
            overflow += int(bad.sum())
            array[start : start + len(stored)] = stored
        assert array is not None  # run_embed refuses an empty collection
        array.flush()
        del array  # the map is closed before the file is renamed into place
        meta = info | {
            "images": n,
            "dim": int(dim),
            "data": coll.name,
            "mean": list(coll.mean),
            "std": list(coll.std),
            "labeled": coll.labels is not None,
            "notes": coll.notes,
        }
        if info["dtype"] == "float16":
            meta["float16_overflow"] = overflow  # values stored as inf (--allow-overflow)
        write_index(files.path("index.csv"), coll)
        write_json(meta, files.path("embeddings.json"))
    return files.names, meta


def run_embed(
    checkpoint: Path, coll: Collection, rt: Runtime, opts: EmbedOptions, out: Path
) -> np.ndarray:
    """Embed every image of ``coll`` with the encoder in ``checkpoint``; write ``out``.
    The images are read and embedded a chunk at a time and each chunk is written at once,
    so neither all images nor all features are ever in memory; returns the written
    embeddings.npy, memory-mapped read-only."""
    if opts.dtype not in DTYPES:
        raise ToolError(f"--dtype must be one of {list(DTYPES)}, got {opts.dtype!r}")
    if len(coll) == 0:
        raise ToolError(f"{coll.name}: the collection holds no images: nothing to embed")
    loaded = load_encoder(checkpoint)
    coll = coll.normalised_as(loaded.training_stats, loaded.source)
    net = loaded.feature_net(opts.feature)
    chunks = feature_chunks(
        net, coll.images, coll.mean, coll.std, rt, opts.batch_size, opts.progress
    )
    info = {
        "checkpoint": str(checkpoint),
        "method": loaded.meta.get("method"),
        "feature": opts.feature,
        "dtype": opts.dtype,
    }
    _, meta = write_embeddings(out, chunks, coll, info, opts.allow_overflow)
    if meta.get("float16_overflow"):
        print(
            f"fassl: warning: {meta['float16_overflow']:,} feature values exceed float16's "
            f"largest value {FLOAT16_MAX:.0f} and were written as inf (counted in "
            "embeddings.json: float16_overflow); --dtype float32 keeps them",
            file=sys.stderr,
        )
    return np.load(out / "embeddings.npy", mmap_mode="r")
