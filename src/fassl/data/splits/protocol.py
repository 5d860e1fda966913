"""The long-tailed protocol (docs/method.md) drawn from a source's (train, test) images.

train -> (pool, val) by a balanced hold-out; pretrain = long-tailed subset of the pool
("pool", SDCLR) or of the whole train set ("full", CIFAR-10-LT); few_shot = nested subset
of the pool. A folder without labels is pre-training data only. ``assemble`` is the one
place a LongTailData is put together from its splits, drawn here or given as lists.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fassl.config import DataConfig
from fassl.data.datasets import LongTailData, Split, channel_stats
from fassl.data.files.decode import ImageSet
from fassl.data.files.store import StoreImages
from fassl.data.splits import longtail
from fassl.errors import DataError

FULL_DEFAULT_MAX = 5000  # "full": CIFAR-10-LT's n_max


def rows_of(images: np.ndarray | StoreImages, idx: np.ndarray) -> np.ndarray | StoreImages:
    """Rows ``idx`` of decoded images: a copy of an array, a view of a stored set."""
    return images.take(idx) if isinstance(images, StoreImages) else images[idx]


def as_split(data: ImageSet, idx: np.ndarray | None = None) -> Split:
    """The images (rows ``idx``, all by default) of a decoded set as a Split; a stored
    set stays on disk (its Split reads rows when asked)."""
    images, labels = data.images, data.labels
    if idx is not None:
        images, labels = rows_of(images, idx), labels[idx]
    if isinstance(images, StoreImages):
        return Split(images, torch.from_numpy(labels))  # type: ignore[arg-type]
    return Split(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels))


def _subset(data: ImageSet, idx: np.ndarray) -> ImageSet:
    return ImageSet(rows_of(data.images, idx), data.labels[idx], data.classes, [])


def carve_test(data: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """A seeded stratified test split for a source that comes without one."""
    keep, held = longtail.stratified_split(data.labels, fraction, seed)
    train, test = _subset(data, keep), _subset(data, held)
    train.report = [
        *data.report,
        f"test split: {len(held):,} images ({fraction:.0%} of each class, seed {seed})",
    ]
    return train, test


def val_cap(smallest: int) -> int:
    """The most validation images per class that leave 90% of the smallest class to the pool."""
    return smallest // 10 if smallest >= 10 else min(1, smallest - 1)


def _val_per_class(
    cfg: DataConfig, train_counts: list[int], fixed_cap: int | None
) -> tuple[int, list[str]]:
    """Validation images per class: capped so that every class keeps 90% for the pool.

    CIFAR-10 keeps 500 (5k); CIFAR-100 (500 per class) gets 50 (5k), the protocol's split.
    A source's ``fixed_cap`` replaces that rule, silently (the digits: 10).
    """
    if fixed_cap is not None:
        return min(cfg.val_per_class, fixed_cap), []
    smallest = min(train_counts)
    per_class = min(cfg.val_per_class, val_cap(smallest))
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


def assemble(
    cfg: DataConfig, name: str, classes: Sequence[str], splits: dict[str, Split], notes: list[str]
) -> LongTailData:
    """LongTailData of the five labeled ``splits``; counts, groups and channel statistics
    are those of ``splits["pretrain"]``."""
    counts = longtail.counts_per_class(splits["pretrain"].labels.numpy(), len(classes))
    mean, std = channel_stats(splits["pretrain"].images)
    return LongTailData(
        name=name,
        classes=list(classes),
        class_counts=counts,
        groups=longtail.group_classes(counts, cfg.groups, cfg.group_thresholds),
        mean=mean,
        std=std,
        notes=notes,
        **splits,
    )


def unlabeled(cfg: DataConfig, train: ImageSet, name: str) -> LongTailData:
    """Every image for pre-training, no labeled splits: a folder without classes."""
    pretrain = as_split(train)
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


def draw(
    cfg: DataConfig,
    train: ImageSet,
    test: ImageSet,
    name: str,
    seed: int,
    fixed_val_cap: int | None = None,
) -> LongTailData:
    """Split a labeled source by the protocol.

    ``seed`` draws the images (val hold-out, long-tailed and few-shot subsets);
    ``cfg.split`` draws which classes are frequent.
    """
    num_classes = len(train.classes)
    train_counts = longtail.counts_per_class(train.labels, num_classes)
    missing = [train.classes[c] for c, n in enumerate(train_counts) if n == 0]
    if missing:
        raise DataError(f"{name}: classes without train images: {missing}")
    per_class, notes = _val_per_class(cfg, train_counts, fixed_val_cap)
    keep, held = longtail.holdout_split(train.labels, per_class, seed)
    pre_idx, how = _pretrain_index(cfg, train, keep, seed)
    pool = as_split(train, keep)
    few_idx = longtail.few_shot_subset(pool.labels.numpy(), cfg.few_shot_fraction, seed)
    pretrain = as_split(train, pre_idx)
    notes = [*train.report, *test.report, *notes]
    notes.append(f"{name} long-tailed subset: {len(pretrain):,} images, {how}")
    splits = {
        "pretrain": pretrain,
        "pool": pool,
        "few_shot": pool.subset(torch.from_numpy(few_idx)),
        "val": as_split(train, held),
        "test": as_split(test),
    }
    return assemble(cfg, name, train.classes, splits, notes)
