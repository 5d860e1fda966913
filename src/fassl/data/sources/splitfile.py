"""dataset=splitfile: splits given as list files, one ``relative/path label`` per line.

SDCLR's ImageNet format (e.g. ``train/n01558993/n01558993_9337.JPEG 26``). Image paths are
relative to data.root; labels are ints 0..C-1. Class names are the images' folder names
(ImageNet wnids) when every label has exactly one folder, else the labels. A missing pool,
val or few-shot list is drawn as the protocol would. Each list is read through its image
store (``files.store``): held in memory when small, memory-mapped otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fassl.config import DataConfig
from fassl.data.datasets import LongTailData, Split
from fassl.data.files.archives import folder_root
from fassl.data.files.filelist import FileList, to_split
from fassl.data.splits import longtail, protocol
from fassl.errors import DataError

SPLITS = ("pretrain", "pool", "few_shot", "val", "test")
REQUIRED = ("pretrain", "test")


@dataclass
class Listed:
    """The entries of one list file, with the line number of each."""

    source: Path
    paths: list[str]
    labels: list[int]
    lines: list[int]


def read_list(path: Path) -> Listed:
    """Parse a list file; a malformed line is an error naming the file and line number."""
    listed = Listed(path, [], [], [])
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or not parts[1].isdigit():
                raise DataError(
                    f"{path}:{number}: expected 'relative/path label' with an integer "
                    f"label >= 0, got {line!r}"
                )
            listed.paths.append(parts[0])
            listed.labels.append(int(parts[1]))
            listed.lines.append(number)
    if not listed.paths:
        raise DataError(f"{path}: no entries")
    return listed


def check_images(root: Path, listed: Listed) -> None:
    """Every listed image must exist: the error names the list file, line and image."""
    for rel, number in zip(listed.paths, listed.lines, strict=True):
        if not (root / rel).is_file():
            raise FileNotFoundError(f"{listed.source}:{number}: image {root / rel} not found")


def class_names(lists: list[Listed], num_classes: int) -> list[str]:
    """The folder name of each label's images when one-to-one, else the label itself."""
    folders: dict[int, set[str]] = {}
    for listed in lists:
        for rel, label in zip(listed.paths, listed.labels, strict=True):
            folders.setdefault(label, set()).add(Path(rel).parent.name)
    names = [
        next(iter(folders[c])) if len(folders.get(c, ())) == 1 else "" for c in range(num_classes)
    ]
    if all(names) and len(set(names)) == num_classes:
        return names
    return [str(c) for c in range(num_classes)]


def list_path(cfg: DataConfig, split: str) -> Path | None:
    """data.split_files.<split> as a path (relative ones in split_files.dir or data.root)."""
    value = getattr(cfg.split_files, split)
    if not value:
        if split in REQUIRED:
            raise DataError(f"data.split_files.{split} must name a list file for dataset=splitfile")
        return None
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(cfg.split_files.dir or cfg.root).expanduser() / path
    if not path.is_file():
        raise FileNotFoundError(f"data.split_files.{split}: list file not found: {path}")
    return path.absolute()


def _root(cfg: DataConfig) -> Path:
    root = folder_root(cfg)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root: image folder not found: {root}")
    return root


def _read_lists(cfg: DataConfig, root: Path) -> dict[str, Listed]:
    lists = {}
    for split in SPLITS:
        path = list_path(cfg, split)
        if path is not None:
            lists[split] = read_list(path)
            check_images(root, lists[split])
    return lists


def _file_lists(cfg: DataConfig, root: Path, seed: int) -> tuple[dict[str, FileList], list[str]]:
    """FileLists of the five splits (pool, val and few-shot filled in), and notes."""
    lists = _read_lists(cfg, root)
    num_classes = 1 + max(max(listed.labels) for listed in lists.values())
    classes = class_names(list(lists.values()), num_classes)
    files = {
        split: FileList(root, listed.paths, np.asarray(listed.labels, np.int64), classes)
        for split, listed in lists.items()
    }
    notes = [f"{split}: {len(f):,} images from {lists[split].source}" for split, f in files.items()]
    files.setdefault("pool", files["pretrain"])
    if "val" not in files:
        smallest = min(c for c in longtail.counts_per_class(files["pool"].labels, num_classes) if c)
        per_class = min(cfg.val_per_class, protocol.val_cap(smallest))
        keep, held = longtail.holdout_split(files["pool"].labels, per_class, seed)
        files["pool"], files["val"] = files["pool"].take(keep), files["pool"].take(held)
        notes.append(f"val: {per_class} images a class held out from the pool (seed {seed})")
    if "few_shot" not in files:
        idx = longtail.few_shot_subset(files["pool"].labels, cfg.few_shot_fraction, seed)
        files["few_shot"] = files["pool"].take(idx)
        notes.append(f"few_shot: {cfg.few_shot_fraction:g} of each pool class (seed {seed})")
    return files, notes


def load(cfg: DataConfig, seed: int) -> LongTailData:
    """LongTailData from list files: pretrain (long-tailed), pool, few_shot, val, test."""
    root = _root(cfg)
    files, notes = _file_lists(cfg, root, seed)
    splits: dict[str, Split] = {
        k: to_split(f, cfg.image_size, cfg.cache_dir, cfg.max_memory_gb, cfg.workers)
        for k, f in files.items()
    }
    mapped = [k for k, split in splits.items() if not isinstance(split.images, torch.Tensor)]
    if mapped:
        notes.append(f"read memory-mapped from the image store: {', '.join(sorted(mapped))}")
    return protocol.assemble(cfg, root.name, files["pretrain"].classes, splits, notes)
