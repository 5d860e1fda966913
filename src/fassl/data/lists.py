"""Splits given as explicit lists of files instead of drawn: the two published formats.

dataset=splitfile: list files, one ``relative/path label`` per line, SDCLR's ImageNet
format (e.g. ``train/n01558993/n01558993_9337.JPEG 26``). Image paths are relative to
data.root; labels are ints 0..C-1. Class names are the images' folder names (ImageNet
wnids) when every label has exactly one folder, else the labels. A missing pool, val or
few-shot list is drawn as the protocol would; a split whose images would not fit
data.max_memory_gb decoded is streamed (``streaming.StreamingImages``).

data.sdclr_splits: SDCLR's published CIFAR splits, fixed index files. The folder holds,
for CIFAR-10, ``trainIdxList.npy`` (probe pool), ``valIdxList.npy`` (validation),
``split{k}_D_i.npy`` (long-tailed pre-training set) and ``split{k}_S_b.npy`` (few-shot
set); for CIFAR-100 the same names with a ``cifar100_`` prefix. All index the ORIGINAL
training order (data_batch_1..5). In the JPEG copy (train/<class>/<k>.jpg), original
index i is the file of class labels[i] whose number k counts the earlier indices of that
class; labels come from ``{cifar10,cifar100}_train_labels.npy`` in the splits folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fassl.config import DataConfig
from fassl.data import cifar, folder, longtail, protocol
from fassl.data.archives import folder_root
from fassl.data.bundle import LongTailData, Split
from fassl.data.decode import IMAGE_EXTENSIONS, ImageSet
from fassl.data.filelist import FileList, decode_list, to_split
from fassl.data.streaming import default_workers, streamed_splits
from fassl.errors import DataError

# ------------------------------------------------------------------ dataset=splitfile

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


def load_splitfile(cfg: DataConfig, seed: int) -> LongTailData:
    """LongTailData from list files: pretrain (long-tailed), pool, few_shot, val, test."""
    root = _root(cfg)
    files, notes = _file_lists(cfg, root, seed)
    size = cfg.image_size
    streamed = streamed_splits({k: len(f) for k, f in files.items()}, size, cfg.max_memory_gb)
    workers = default_workers(cfg.workers)
    splits: dict[str, Split] = {
        k: to_split(f, size, cfg.cache_dir, workers if k in streamed else None)
        for k, f in files.items()
    }
    if streamed:
        notes.append(
            f"streamed (decoded on the fly by {workers} processes, beyond data.max_memory_gb="
            f"{cfg.max_memory_gb:g}): {', '.join(sorted(streamed))}"
        )
    return protocol.assemble(cfg, root.name, files["pretrain"].classes, splits, notes)


# ------------------------------------------------------------------ data.sdclr_splits

PREFIX = {"cifar10": "", "cifar100": "cifar100_"}
DATASET_BY_CLASSES = {10: "cifar10", 100: "cifar100"}


@dataclass(frozen=True)
class SplitPaths:
    """The four index files of one split."""

    pretrain: Path
    pool: Path
    val: Path
    few_shot: Path


def labels_file(folder: Path, dataset: str) -> Path:
    return folder / f"{dataset}_train_labels.npy"


def split_paths(folder: str | Path, dataset: str, split: int) -> SplitPaths:
    """Split ``split``'s files in ``folder``; a missing file is an error naming it."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"data.sdclr_splits: folder not found: {folder}")
    prefix = PREFIX[dataset]
    found = sorted(p.name for p in folder.glob(f"{prefix}split*_D_i.npy"))
    if split < 1:
        raise DataError(
            f"data.split={split}: with data.sdclr_splits, data.split names the split file "
            f"(1, 2, ...); {folder} holds {found or 'no split files'}"
        )
    paths = SplitPaths(
        pretrain=folder / f"{prefix}split{split}_D_i.npy",
        pool=folder / f"{prefix}trainIdxList.npy",
        val=folder / f"{prefix}valIdxList.npy",
        few_shot=folder / f"{prefix}split{split}_S_b.npy",
    )
    for path in vars(paths).values():
        if not path.is_file():
            raise FileNotFoundError(
                f"data.sdclr_splits: {path} not found ({dataset}, data.split={split}; "
                f"split files there: {found or 'none'})"
            )
    return paths


def read_indices(path: Path, n: int) -> np.ndarray:
    """A 1-D array of distinct indices into a training set of ``n`` images."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a numpy index file ({err})") from err
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise DataError(f"{path}: expected a 1-D integer array, got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise DataError(f"{path}: indices must lie in [0, {n}), got {arr.min()}..{arr.max()}")
    if len(np.unique(arr)) != len(arr):
        raise DataError(f"{path}: repeated indices")
    return arr


def _numbered_files(folder: Path) -> dict[int, str]:
    """Image files of a class folder by their integer stem (0000.jpg -> 0)."""
    table = {}
    for name in os.listdir(folder):
        stem, ext = os.path.splitext(name)
        if ext.lower() in IMAGE_EXTENSIONS and stem.isdigit():
            table[int(stem)] = name
    return table


def jpeg_train_files(train_dir: Path, labels: np.ndarray, classes: list[str]) -> list[str]:
    """Relative path of each original training index: train/<class>/<k>.<ext>."""
    tables = [_numbered_files(train_dir / c) for c in classes]
    seen = np.zeros(len(classes), dtype=np.int64)
    files = []
    for i, c in enumerate(labels.tolist()):
        k = int(seen[c])
        seen[c] += 1
        if k not in tables[c]:
            raise FileNotFoundError(
                f"{train_dir / classes[c]}: no image numbered {k} for original training "
                f"index {i} (class {classes[c]}, its image number {k} counting from 0)"
            )
        files.append(f"{classes[c]}/{tables[c][k]}")
    return files


def load_jpeg_train(cfg: DataConfig, train_dir: Path) -> tuple[ImageSet, str]:
    """The JPEG copy's training images in the original CIFAR order, and the dataset name."""
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir() and d.name[0] != ".")
    dataset = DATASET_BY_CLASSES.get(len(classes))
    if dataset is None:
        raise DataError(
            f"data.sdclr_splits: {train_dir} has {len(classes)} class folders; SDCLR's "
            "splits are for CIFAR-10 (10) and CIFAR-100 (100)"
        )
    path = labels_file(Path(cfg.sdclr_splits).expanduser(), dataset)
    if not path.is_file():
        raise FileNotFoundError(
            f"data.sdclr_splits: {path} not found; the JPEG copy needs the original training "
            "labels in order to map SDCLR's indices to its files"
        )
    labels = read_labels(path, len(classes))
    files = FileList(train_dir, jpeg_train_files(train_dir, labels, classes), labels, classes)
    return decode_list(files, cfg.image_size, cfg.cache_dir, "sdclr-jpeg"), dataset


def read_labels(path: Path, num_classes: int) -> np.ndarray:
    labels = np.load(path, allow_pickle=False)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or labels.size == 0:
        raise DataError(f"{path}: expected a 1-D integer label array")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{path}: labels must lie in [0, {num_classes})")
    return labels.astype(np.int64)


def _check_labels(cfg: DataConfig, dataset: str, train: ImageSet) -> None:
    """Where a labels file is at hand, the source's order must be the original one."""
    path = labels_file(Path(cfg.sdclr_splits).expanduser(), dataset)
    if path.is_file() and not np.array_equal(read_labels(path, len(train.classes)), train.labels):
        raise DataError(f"{path}: these labels differ from the training set's, in order")


def assemble_sdclr(
    cfg: DataConfig, dataset: str, train: ImageSet, test: ImageSet, name: str
) -> LongTailData:
    """LongTailData of split ``cfg.split``: D_i, the pool, validation and S_b, in file order."""
    _check_labels(cfg, dataset, train)
    paths = split_paths(cfg.sdclr_splits, dataset, cfg.split)
    idx = {key: read_indices(path, len(train)) for key, path in vars(paths).items()}
    splits = {key: protocol.as_split(train, rows) for key, rows in idx.items()}
    splits["test"] = protocol.as_split(test)
    line = (
        f"{name} SDCLR split {cfg.split}: {len(idx['pretrain']):,} pre-training images from "
        f"{paths.pretrain}; pool {len(idx['pool']):,} ({paths.pool.name}), validation "
        f"{len(idx['val']):,} ({paths.val.name}), few-shot {len(idx['few_shot']):,} "
        f"({paths.few_shot.name})"
    )
    return protocol.assemble(cfg, name, train.classes, splits, [*train.report, *test.report, line])


def load_sdclr(cfg: DataConfig) -> LongTailData:
    """SDCLR's published split ``cfg.split`` (data.sdclr_splits) of CIFAR or its JPEG copy."""
    if cfg.dataset in cifar.DISPLAY_NAMES:
        train, test = cifar.load_train_test(cfg)
        return assemble_sdclr(cfg, cfg.dataset, train, test, cifar.DISPLAY_NAMES[cfg.dataset])
    if cfg.dataset != "folder":
        raise DataError(
            "data.sdclr_splits works with data.dataset cifar10, cifar100 or folder (the JPEG "
            f"copy with train/ and test/), not {cfg.dataset!r}"
        )
    root = folder_root(cfg)
    if not folder.has_train_test(root):
        raise FileNotFoundError(f"data.sdclr_splits: {root} needs train/ and test/ folders")
    train, dataset = load_jpeg_train(cfg, root / "train")
    test = folder.load_cached(cfg, root / "test", train.classes)
    return assemble_sdclr(cfg, dataset, train, test, root.name)
