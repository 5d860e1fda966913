"""``fassl embed``: one feature vector per image, in a file any program can read.

Writes ``embeddings.npy`` (N x D, float32 or float16), ``index.csv`` (row, path, label:
row i of the array is the image on line i) and ``embeddings.json`` (checkpoint, feature,
the normalisation used, notes from loading the images).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fassl.data.collection import Collection
from fassl.encoders import load_encoder
from fassl.errors import ToolError, printable
from fassl.features import embed_images
from fassl.files import OutputSet
from fassl.report import write_json
from fassl.runtime import Runtime

DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass
class EmbedOptions:
    """How ``fassl embed`` runs: which output of the encoder, stored in which precision."""

    feature: str = "backbone"  # backbone (what the probe reads) | projection
    dtype: str = "float32"  # float32 | float16
    batch_size: int = 512
    progress: bool = True


def write_index(path: Path, coll: Collection) -> None:
    """index.csv: row, path, label (class name; empty without labels), in array order."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["row", "path", "label"])
        for i, name in enumerate(coll.paths):
            # names that are not valid UTF-8 as \xNN escapes, as in the run's notes
            w.writerow([i, printable(name), printable(coll.label_name(i))])


def write_embeddings(out: Path, feats: torch.Tensor, coll: Collection, info: dict) -> list[str]:
    """embeddings.npy, index.csv and embeddings.json into ``out``, renamed into place
    together once all are written; returns their names."""
    meta = info | {
        "images": len(coll),
        "dim": int(feats.shape[1]),
        "data": coll.name,
        "mean": list(coll.mean),
        "std": list(coll.std),
        "labeled": coll.labels is not None,
        "notes": coll.notes,
    }
    with OutputSet(out) as files:
        np.save(files.path("embeddings.npy"), feats.numpy().astype(DTYPES[info["dtype"]]))
        write_index(files.path("index.csv"), coll)
        write_json(meta, files.path("embeddings.json"))
    return files.names


def run_embed(
    checkpoint: Path, coll: Collection, rt: Runtime, opts: EmbedOptions, out: Path
) -> torch.Tensor:
    """Embed every image of ``coll`` with the encoder in ``checkpoint``; write ``out``."""
    if opts.dtype not in DTYPES:
        raise ToolError(f"--dtype must be one of {list(DTYPES)}, got {opts.dtype!r}")
    loaded = load_encoder(checkpoint)
    coll = coll.normalised_as(loaded.training_stats, loaded.source)
    net = loaded.feature_net(opts.feature)
    feats = embed_images(net, coll.images, coll.mean, coll.std, rt, opts.batch_size, opts.progress)
    info = {
        "checkpoint": str(checkpoint),
        "method": loaded.meta.get("method"),
        "feature": opts.feature,
        "dtype": opts.dtype,
    }
    write_embeddings(out, feats, coll, info)
    return feats
