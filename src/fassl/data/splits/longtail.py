"""The long-tailed protocol as pure functions of labels and seeds (SDCLR's CIFAR protocol).

Every subset is drawn per class from a shuffle that depends only on (seed, stream, class),
never on how many images are asked for, so a smaller request is always a subset of a
larger one (nested few-shot sets, nested long-tailed subsets).
Index arrays are returned sorted, so subsets keep the order of the source.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from fassl.errors import DataError

# Distinct random streams so that e.g. the validation hold-out and the few-shot subset
# drawn with the same seed are not the same shuffle.
_HOLDOUT, _LONGTAIL, _FEW_SHOT, _STRATIFIED = 1, 2, 3, 4

IntArray = np.ndarray  # int64 index or label array


def longtail_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """Images per frequency rank r = 0..C-1: ``int(n_max * imbalance ** (-r / (C - 1)))``.

    Rank 0 is the most frequent class; rho = n_max / n_min = ``imbalance``.
    """
    if n_max < 1 or num_classes < 1:
        raise DataError(f"need n_max >= 1 and num_classes >= 1, got {n_max}, {num_classes}")
    if imbalance < 1:
        raise DataError(f"imbalance must be >= 1, got {imbalance}")
    if num_classes == 1:
        return [n_max]
    return [int(n_max * imbalance ** (-r / (num_classes - 1))) for r in range(num_classes)]


def class_rank_permutation(num_classes: int, split: int) -> list[int]:
    """Element r is the class id that gets frequency rank r (rank 0 = most frequent).

    ``split >= 0`` seeds a random permutation (``numpy.random.default_rng(split)``), so
    which classes are frequent changes with the split as in SDCLR's five splits;
    ``split == -1`` keeps label order: class 0 is the most frequent, class C-1 the rarest.
    """
    if split == -1:
        return list(range(num_classes))
    if split < 0:
        raise DataError(f"split must be >= 0 or -1 (label order), got {split}")
    return [int(c) for c in np.random.default_rng(split).permutation(num_classes)]


def _as_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(labels, dtype=np.int64)
    if arr.ndim != 1:
        raise DataError(f"labels must be 1-D, got shape {arr.shape}")
    return arr


def _class_shuffles(labels: np.ndarray, seed: int, stream: int) -> dict[int, np.ndarray]:
    """Indices of each class (labels >= 0) in an order fixed by (seed, stream, class)."""
    out = {}
    for c in np.unique(labels[labels >= 0]).tolist():
        idx = np.flatnonzero(labels == c)
        out[c] = np.random.default_rng([seed, stream, c]).permutation(idx)
    return out


def _take_first(shuffles: dict[int, np.ndarray], counts: dict[int, int]) -> np.ndarray:
    parts = [shuffles[c][: counts[c]] for c in shuffles]
    return np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)


def holdout_split(
    labels: Sequence[int] | np.ndarray, per_class: int, seed: int
) -> tuple[IntArray, IntArray]:
    """Hold out ``per_class`` images of every class: (keep_idx, held_idx), both sorted.

    This is the balanced validation set (CIFAR-10: 500 per class, 45k kept / 5k held).
    Each class must keep at least one image.
    """
    labels = _as_labels(labels)
    shuffles = _class_shuffles(labels, seed, _HOLDOUT)
    for c, idx in shuffles.items():
        if len(idx) <= per_class:
            raise DataError(
                f"class {c} has {len(idx)} images; cannot hold out {per_class} and keep any"
            )
    held = _take_first(shuffles, dict.fromkeys(shuffles, per_class))
    keep = np.setdiff1d(np.arange(len(labels)), held, assume_unique=True)
    return keep.astype(np.int64), held.astype(np.int64)


def longtail_subset(
    labels: Sequence[int] | np.ndarray, counts_by_class: Sequence[int], seed: int
) -> IntArray:
    """Per class c the first ``counts_by_class[c]`` images of a seeded per-class shuffle.

    Nested: lowering any class's count gives a subset of the larger draw.
    """
    labels = _as_labels(labels)
    shuffles = _class_shuffles(labels, seed, _LONGTAIL)
    counts = {}
    for c, n in enumerate(counts_by_class):
        have = len(shuffles.get(c, ()))
        if n > have:
            raise DataError(f"class {c} needs {n} images but has only {have}")
        counts[c] = n
    extra = set(shuffles) - set(counts)
    if extra:
        raise DataError(f"labels contain classes without a count: {sorted(extra)}")
    return _take_first(shuffles, counts).astype(np.int64)


def few_shot_subset(labels: Sequence[int] | np.ndarray, fraction: float, seed: int) -> IntArray:
    """Balanced few-shot subset: per class ``max(1, round(fraction * n_c))`` images.

    Nested across fractions for a fixed seed (CIFAR-10 pool of 45k at 1%: 45 per class).
    """
    if not 0 < fraction <= 1:
        raise DataError(f"fraction must be in (0, 1], got {fraction}")
    labels = _as_labels(labels)
    shuffles = _class_shuffles(labels, seed, _FEW_SHOT)
    counts = {c: max(1, round(fraction * len(idx))) for c, idx in shuffles.items()}
    return _take_first(shuffles, counts).astype(np.int64)


def stratified_split(
    labels: Sequence[int] | np.ndarray, fraction: float, seed: int
) -> tuple[IntArray, IntArray]:
    """Carve a test split of ``round(fraction * n_c)`` images per class: (keep_idx, test_idx).

    Used where a source has no test set (a single image folder, the digits); every class
    keeps at least one image.
    """
    if not 0 <= fraction < 1:
        raise DataError(f"fraction must be in [0, 1), got {fraction}")
    labels = _as_labels(labels)
    shuffles = _class_shuffles(labels, seed, _STRATIFIED)
    counts = {c: min(round(fraction * len(idx)), len(idx) - 1) for c, idx in shuffles.items()}
    held = _take_first(shuffles, counts)
    keep = np.setdiff1d(np.arange(len(labels)), held, assume_unique=True)
    return keep.astype(np.int64), held.astype(np.int64)


def counts_per_class(labels: Sequence[int] | np.ndarray, num_classes: int) -> list[int]:
    """Number of images of each class 0..C-1 (labels < 0 are ignored)."""
    labels = _as_labels(labels)
    return np.bincount(labels[labels >= 0], minlength=num_classes).tolist()


# the groups from the least to the most frequent: a tie between groups goes to the later
_ASCENDING = ("rare", "medium", "frequent")


def _places(num_classes: int) -> list[str]:
    """The group of each place in ascending count order, before ties are merged: the
    C//3 least frequent places Rare, the next C//3 Medium, the rest Frequent; with two
    classes Rare and Frequent, so the smaller class is never called Frequent."""
    if num_classes == 2:
        return ["rare", "frequent"]
    third = num_classes // 3
    return ["rare"] * third + ["medium"] * third + ["frequent"] * (num_classes - 2 * third)


def frequency_groups(class_counts: Sequence[int]) -> dict[str, list[int]]:
    """Frequent / Medium / Rare class ids by count (the paper's group metrics).

    Classes are sorted by ascending count; the C//3 least frequent are Rare, the next
    C//3 Medium, the rest Frequent (CIFAR-10: 4 / 3 / 3 Frequent / Medium / Rare).

    - Ties: classes with equal counts always share a group. A block of equal counts that
      straddles a boundary goes whole to the group that holds most of its places, and to
      the more frequent of them on an equal split; so all-equal counts are all Frequent,
      and a group may be empty. Between blocks the sorted-by-count order is kept.
    - Fewer than three classes: one class is Frequent; of two, the larger is Frequent and
      the smaller Rare, Medium empty (two equal classes are both Frequent).

    Each group's ids are returned in ascending order.
    """
    order = sorted(range(len(class_counts)), key=lambda c: (class_counts[c], c))
    places = _places(len(order))
    groups: dict[str, list[int]] = {"frequent": [], "medium": [], "rare": []}
    start = 0
    for _, block in itertools.groupby(order, key=lambda c: class_counts[c]):
        ids = list(block)
        held = places[start : start + len(ids)]
        start += len(ids)
        # most places first, then the more frequent group (the later in _ASCENDING)
        group = max(_ASCENDING, key=lambda g: (held.count(g), _ASCENDING.index(g)))
        groups[group].extend(ids)
    return {name: sorted(ids) for name, ids in groups.items()}


def count_groups(
    class_counts: Sequence[int], frequent_above: int, rare_below: int
) -> dict[str, list[int]]:
    """Groups by absolute count (SDCLR's ImageNet-100-LT rule with 100 and 20).

    frequent: n > ``frequent_above``; rare: n < ``rare_below``; medium: the rest. Equal
    counts always share a group, and a group may be empty (any with fewer than three
    classes): the thresholds alone decide, however many classes there are.
    """
    if not 0 <= rare_below <= frequent_above:
        raise DataError(
            f"need 0 <= rare_below <= frequent_above, got {rare_below}, {frequent_above}"
        )
    groups: dict[str, list[int]] = {"frequent": [], "medium": [], "rare": []}
    for c, n in enumerate(class_counts):
        name = "frequent" if n > frequent_above else "rare" if n < rare_below else "medium"
        groups[name].append(c)
    return groups


GROUP_RULES = ("thirds", "counts")


def group_classes(
    class_counts: Sequence[int], rule: str = "thirds", thresholds: Sequence[int] = (100, 20)
) -> dict[str, list[int]]:
    """Frequent / Medium / Rare class ids by ``rule`` (data.groups, data.group_thresholds):
    ``thirds`` (``frequency_groups``) or ``counts`` (``count_groups``).

    Under both rules classes with equal counts share a group, and every group is a key of
    the result, an empty list where it has no class; the metrics and reports leave an
    empty group out (never NaN).
    """
    if rule == "thirds":
        return frequency_groups(class_counts)
    if rule == "counts":
        frequent_above, rare_below = thresholds
        return count_groups(class_counts, frequent_above, rare_below)
    raise DataError(f"unknown group rule {rule!r}; expected one of {list(GROUP_RULES)}")
