"""data.sdclr_splits: SDCLR's published CIFAR splits, fixed index files.

The folder holds, for CIFAR-10, ``trainIdxList.npy`` (probe pool), ``valIdxList.npy``
(validation), ``split{k}_D_i.npy`` (long-tailed pre-training set) and ``split{k}_S_b.npy``
(few-shot set); for CIFAR-100 the same names with a ``cifar100_`` prefix. All index the
ORIGINAL training order (data_batch_1..5). In the JPEG copy (train/<class>/<k>.jpg),
original index i is the file of class labels[i] whose number k counts the earlier indices
of that class; labels come from ``{cifar10,cifar100}_train_labels.npy`` in the splits folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fassl.config import DataConfig
from fassl.data.datasets import LongTailData
from fassl.data.files.archives import folder_root
from fassl.data.files.decode import IMAGE_EXTENSIONS, ImageSet
from fassl.data.files.filelist import FileList, decode_list
from fassl.data.sources import cifar, folder
from fassl.data.splits import protocol
from fassl.errors import DataError

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
    data = decode_list(files, cfg.image_size, cfg.cache_dir, "sdclr-jpeg", cfg.max_memory_gb)
    return data, dataset


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


def load(cfg: DataConfig) -> LongTailData:
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
    test = folder.load_stored(cfg, root / "test", train.classes)
    return assemble_sdclr(cfg, dataset, train, test, root.name)
