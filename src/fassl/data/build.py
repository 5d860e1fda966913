"""From a DataConfig to the in-memory LongTailData every stage reads (docs/method.md protocol).

train -> (pool, val) by a balanced hold-out; pretrain = long-tailed subset of the pool
("pool", SDCLR) or of the whole train set ("full", CIFAR-10-LT); few_shot = nested subset
of the pool. A folder without labels is pre-training data only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fassl.config import DataConfig
from fassl.data import cache, longtail, sdclr, splitfiles, tinyimagenet
from fassl.data.archives import extract_archive, is_archive
from fassl.data.bundle import LongTailData, Split
from fassl.data.filelist import channel_stats
from fassl.data.sources import (
    ImageSet,
    load_cifar,
    load_digits,
    load_labeled_folder,
    load_unlabeled_folder,
)
from fassl.errors import DataError

FOLDER_TEST_FRACTION = 0.2  # a folder without train/ and test/ keeps 20% per class as test
DIGITS_TEST_FRACTION = 0.3
DIGITS_MAX_VAL_PER_CLASS = 10  # the digits have ~125 train images per class
FULL_DEFAULT_MAX = 5000  # "full": CIFAR-10-LT's n_max
DISPLAY_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "digits": "digits"}


def _split(data: ImageSet, idx: np.ndarray | None = None) -> Split:
    images, labels = data.images, data.labels
    if idx is not None:
        images, labels = images[idx], labels[idx]
    return Split(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels))


def _subset(data: ImageSet, idx: np.ndarray) -> ImageSet:
    return ImageSet(data.images[idx], data.labels[idx], data.classes, [])


def _load_folder(cfg: DataConfig, root: Path, classes: list[str] | None = None) -> ImageSet:
    """A folder through the decode cache; a report line says whether the cache was used."""
    size = cfg.image_size

    def decode() -> ImageSet:
        if cfg.labeled:
            return load_labeled_folder(root, size, classes)
        return load_unlabeled_folder(root, size)

    kind = "folder-labeled" if cfg.labeled else "folder-unlabeled"
    data, hit = cache.cached(cfg.cache_dir, kind, root, size, decode, classes or [])
    verb = "read from" if hit else "decoded and saved to"
    line = f"{root}: {len(data):,} images {verb} the cache in {cache.cache_root(cfg.cache_dir)}"
    data.report = [line, *data.report]
    return data


def _carve_test(data: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """A seeded stratified test split for a source that comes without one."""
    keep, held = longtail.stratified_split(data.labels, fraction, seed)
    train, test = _subset(data, keep), _subset(data, held)
    train.report = [
        *data.report,
        f"test split: {len(held):,} images ({fraction:.0%} of each class, seed {seed})",
    ]
    return train, test


def folder_root(cfg: DataConfig) -> Path:
    """data.root as a folder: an archive is unpacked once into the cache."""
    if not cfg.root:
        raise DataError(f"data.root must name the image folder for dataset={cfg.dataset}")
    root = Path(cfg.root).expanduser().absolute()
    if is_archive(root):
        root = extract_archive(root, cache.cache_root(cfg.cache_dir))
    return root


def load_source(cfg: DataConfig, seed: int = 0) -> tuple[ImageSet, ImageSet | None, str]:
    """(train, test, display name); test is None for an unlabeled folder."""
    if cfg.dataset in ("cifar10", "cifar100"):
        # no root: the cache folder, so a download never lands in the working directory
        train, test = load_cifar(cfg.root or cfg.cache_dir, cfg.dataset, cfg.download)
        return train, test, DISPLAY_NAMES[cfg.dataset]
    if cfg.dataset == "tinyimagenet":
        train, test = tinyimagenet.load(cfg, folder_root(cfg))
        return train, test, tinyimagenet.DISPLAY_NAME
    if cfg.dataset == "digits":
        train, test = _carve_test(load_digits(cfg.image_size), DIGITS_TEST_FRACTION, seed)
        return train, test, DISPLAY_NAMES["digits"]
    if cfg.dataset != "folder":
        raise DataError(f"unknown dataset {cfg.dataset!r}")
    root = folder_root(cfg)
    name = root.name
    if not cfg.labeled:
        return _load_folder(cfg, root), None, name
    if (root / "train").is_dir() and (root / "test").is_dir():
        train = _load_folder(cfg, root / "train")
        return train, _load_folder(cfg, root / "test", train.classes), name
    train, test = _carve_test(_load_folder(cfg, root), FOLDER_TEST_FRACTION, seed)
    return train, test, name


def _val_per_class(cfg: DataConfig, train_counts: list[int]) -> tuple[int, list[str]]:
    """Validation images per class: capped so that every class keeps 90% for the pool.

    CIFAR-10 keeps 500 (5k); CIFAR-100 (500 per class) gets 50 (5k), the protocol's split.
    """
    if cfg.dataset == "digits":
        return min(cfg.val_per_class, DIGITS_MAX_VAL_PER_CLASS), []
    smallest = min(train_counts)
    cap = smallest // 10 if smallest >= 10 else min(1, smallest - 1)
    per_class = min(cfg.val_per_class, cap)
    if per_class == cfg.val_per_class:
        return per_class, []
    note = (
        f"validation: {per_class} images per class (data.val_per_class={cfg.val_per_class} "
        f"capped at a tenth of the smallest class, {smallest} images)"
    )
    return per_class, [note]


def _longtail_counts(
    cfg: DataConfig, available: list[int], default_max: int
) -> tuple[list[int], int]:
    """Per-class counts of the long-tailed subset, and the n_max used."""
    num_classes = len(available)
    n_max = cfg.max_per_class or default_max
    if n_max > min(available):
        raise DataError(
            f"data.max_per_class={n_max} exceeds the smallest class ({min(available)} images)"
        )
    by_rank = longtail.longtail_counts(n_max, num_classes, cfg.imbalance)
    counts = [0] * num_classes
    for rank, cls in enumerate(longtail.class_rank_permutation(num_classes, cfg.split)):
        counts[cls] = by_rank[rank]
    return counts, n_max


def _pretrain_index(
    cfg: DataConfig, train: ImageSet, keep: np.ndarray, seed: int
) -> tuple[np.ndarray, str]:
    """Indices into ``train`` of the pre-training set, and the line that describes it."""
    num_classes = len(train.classes)
    if cfg.longtail == "none":
        return np.arange(len(train)), "all train images as found (data.longtail=none)"
    if cfg.longtail == "pool":
        source = keep
        available = longtail.counts_per_class(train.labels[keep], num_classes)
        counts, n_max = _longtail_counts(cfg, available, min(available))
    elif cfg.longtail == "full":
        source = np.arange(len(train))
        available = longtail.counts_per_class(train.labels, num_classes)
        default = min(FULL_DEFAULT_MAX, min(available))
        counts, n_max = _longtail_counts(cfg, available, default)
    else:
        raise DataError(f"unknown data.longtail {cfg.longtail!r}")
    picked = source[longtail.longtail_subset(train.labels[source], counts, seed)]
    split = "label order" if cfg.split == -1 else f"split {cfg.split}"
    where = "probe pool" if cfg.longtail == "pool" else "full train set"
    return np.sort(picked), f"rho {cfg.imbalance:g}, n_max {n_max}, {split}, from the {where}"


def _unlabeled(cfg: DataConfig, train: ImageSet, name: str) -> LongTailData:
    pretrain = _split(train)
    mean, std = channel_stats(pretrain.images)
    empty = Split.empty(cfg.image_size)
    notes = [*train.report, f"{name} unlabeled: {len(pretrain):,} images for pre-training"]
    return LongTailData(
        name=name,
        classes=[],
        pretrain=pretrain,
        pool=empty,
        few_shot=empty,
        val=empty,
        test=empty,
        class_counts=[],
        groups={},
        mean=mean,
        std=std,
        labeled=False,
        notes=notes,
    )


def _build_sdclr(cfg: DataConfig) -> LongTailData:
    """SDCLR's published split ``cfg.split`` (data.sdclr_splits) of CIFAR or its JPEG copy."""
    if cfg.dataset in ("cifar10", "cifar100"):
        train, test = load_cifar(cfg.root or cfg.cache_dir, cfg.dataset, cfg.download)
        return sdclr.assemble(cfg, cfg.dataset, train, test, DISPLAY_NAMES[cfg.dataset])
    if cfg.dataset != "folder":
        raise DataError(
            "data.sdclr_splits works with data.dataset cifar10, cifar100 or folder (the JPEG "
            f"copy with train/ and test/), not {cfg.dataset!r}"
        )
    root = folder_root(cfg)
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise FileNotFoundError(f"data.sdclr_splits: {root} needs train/ and test/ folders")
    train, dataset = sdclr.load_jpeg_train(cfg, root / "train")
    test = _load_folder(cfg, root / "test", train.classes)
    return sdclr.assemble(cfg, dataset, train, test, root.name)


def build_data(cfg: DataConfig, seed: int = 0) -> LongTailData:
    """Load the source named by ``cfg`` and split it by the long-tailed protocol.

    ``seed`` draws the images (test/val hold-outs, long-tailed and few-shot subsets);
    ``cfg.split`` draws which classes are frequent.
    """
    if cfg.sdclr_splits:
        return _build_sdclr(cfg)
    if cfg.dataset == "splitfile":
        return splitfiles.build(cfg, seed)
    train, test, name = load_source(cfg, seed)
    if test is None:
        return _unlabeled(cfg, train, name)
    num_classes = len(train.classes)
    train_counts = longtail.counts_per_class(train.labels, num_classes)
    missing = [train.classes[c] for c, n in enumerate(train_counts) if n == 0]
    if missing:
        raise DataError(f"{name}: classes without train images: {missing}")
    per_class, notes = _val_per_class(cfg, train_counts)
    keep, held = longtail.holdout_split(train.labels, per_class, seed)
    pre_idx, how = _pretrain_index(cfg, train, keep, seed)
    pool = _split(train, keep)
    few_idx = longtail.few_shot_subset(pool.labels.numpy(), cfg.few_shot_fraction, seed)
    pretrain = _split(train, pre_idx)
    class_counts = longtail.counts_per_class(pretrain.labels.numpy(), num_classes)
    mean, std = channel_stats(pretrain.images)
    notes = [*train.report, *test.report, *notes]
    notes.append(f"{name} long-tailed subset: {len(pretrain):,} images, {how}")
    return LongTailData(
        name=name,
        classes=list(train.classes),
        pretrain=pretrain,
        pool=pool,
        few_shot=pool.subset(torch.from_numpy(few_idx)),
        val=_split(train, held),
        test=_split(test),
        class_counts=class_counts,
        groups=longtail.group_classes(class_counts, cfg.groups, cfg.group_thresholds),
        mean=mean,
        std=std,
        labeled=True,
        notes=notes,
    )
