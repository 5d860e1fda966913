"""The long-tailed protocol: pure functions against hand-computed values, then build_data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fassl.config import DataConfig
from fassl.data import LongTailData, build_data
from fassl.data.splits import longtail as lt
from tests.data_fixtures import cifar10_jpeg_root, write_cifar10, write_class_folder

CIFAR10_LT = [4500, 2697, 1617, 969, 581, 348, 208, 125, 75, 45]


def balanced_labels(num_classes: int, per_class: int) -> np.ndarray:
    """Interleaved labels 0, 1, ..., C-1, 0, 1, ... so classes are not contiguous."""
    return np.tile(np.arange(num_classes), per_class)


# ----------------------------------------------------------------- longtail_counts


def test_cifar10_counts_match_the_protocol() -> None:
    counts = lt.longtail_counts(4500, 10, 100)
    assert counts == CIFAR10_LT
    assert sum(counts) == 11_165


@pytest.mark.parametrize(
    ("n_max", "classes", "total"), [(5000, 10, 12_406), (500, 100, 10_847), (4500, 10, 11_165)]
)
def test_count_totals(n_max: int, classes: int, total: int) -> None:
    assert sum(lt.longtail_counts(n_max, classes, 100)) == total


def test_counts_edge_cases() -> None:
    assert lt.longtail_counts(300, 5, 1) == [300] * 5
    assert lt.longtail_counts(7, 1, 100) == [7]
    assert lt.longtail_counts(100, 2, 10) == [100, 10]
    with pytest.raises(ValueError, match="imbalance"):
        lt.longtail_counts(100, 10, 0.5)


# ----------------------------------------------------------- class_rank_permutation


def test_rank_permutation_label_order_and_seeded() -> None:
    assert lt.class_rank_permutation(10, -1) == list(range(10))
    perm = lt.class_rank_permutation(10, 0)
    assert perm == np.random.default_rng(0).permutation(10).tolist()
    assert perm == [4, 6, 2, 7, 3, 5, 9, 0, 8, 1]
    assert sorted(perm) == list(range(10))
    assert lt.class_rank_permutation(10, 0) == perm
    assert lt.class_rank_permutation(10, 1) != perm
    with pytest.raises(ValueError, match="split"):
        lt.class_rank_permutation(10, -2)


# ------------------------------------------------------------------ holdout_split


def test_holdout_is_balanced_disjoint_and_seeded() -> None:
    labels = balanced_labels(10, 5000)  # the CIFAR-10 train set's shape
    keep, held = lt.holdout_split(labels, 500, seed=0)
    assert len(keep) == 45_000 and len(held) == 5_000
    assert np.bincount(labels[held]).tolist() == [500] * 10
    assert np.intersect1d(keep, held).size == 0
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(50_000))
    again_keep, again_held = lt.holdout_split(labels, 500, seed=0)
    assert np.array_equal(held, again_held) and np.array_equal(keep, again_keep)
    assert not np.array_equal(held, lt.holdout_split(labels, 500, seed=1)[1])


def test_holdout_needs_an_image_left() -> None:
    with pytest.raises(ValueError, match="class 2 has 3 images"):
        lt.holdout_split([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2], 3, seed=0)


# ---------------------------------------------------------------- longtail_subset


def test_longtail_subset_counts_and_nesting() -> None:
    labels = balanced_labels(10, 4500)
    big = lt.longtail_subset(labels, CIFAR10_LT, seed=3)
    assert len(big) == 11_165
    assert np.bincount(labels[big], minlength=10).tolist() == CIFAR10_LT
    smaller = [n // 2 for n in CIFAR10_LT]
    small = lt.longtail_subset(labels, smaller, seed=3)
    assert np.bincount(labels[small], minlength=10).tolist() == smaller
    assert np.isin(small, big).all()
    assert not np.array_equal(big, lt.longtail_subset(labels, CIFAR10_LT, seed=4))


def test_longtail_subset_errors() -> None:
    labels = balanced_labels(3, 4)
    with pytest.raises(ValueError, match="class 1 needs 5 images but has only 4"):
        lt.longtail_subset(labels, [4, 5, 1], seed=0)
    with pytest.raises(ValueError, match="without a count"):
        lt.longtail_subset(labels, [1, 1], seed=0)


# ---------------------------------------------------------------- few_shot_subset


def test_few_shot_is_one_percent_and_nested() -> None:
    labels = balanced_labels(10, 4500)  # the CIFAR-10 probe pool
    one = lt.few_shot_subset(labels, 0.01, seed=0)
    assert np.bincount(labels[one]).tolist() == [45] * 10
    ten = lt.few_shot_subset(labels, 0.1, seed=0)
    half = lt.few_shot_subset(labels, 0.5, seed=0)
    assert np.isin(one, ten).all() and np.isin(ten, half).all()
    assert len(lt.few_shot_subset(labels, 1.0, seed=0)) == 45_000


def test_few_shot_keeps_one_image_of_a_small_class() -> None:
    labels = np.array([0] * 200 + [1] * 20)
    idx = lt.few_shot_subset(labels, 0.01, seed=0)
    assert np.bincount(labels[idx]).tolist() == [2, 1]
    with pytest.raises(ValueError):
        lt.few_shot_subset(labels, 0.0, seed=0)


def test_stratified_split_per_class() -> None:
    labels = np.array([0] * 10 + [1] * 5 + [2] * 1)
    keep, held = lt.stratified_split(labels, 0.2, seed=0)
    assert np.bincount(labels[held], minlength=3).tolist() == [2, 1, 0]
    assert len(keep) + len(held) == 16 and np.intersect1d(keep, held).size == 0


# --------------------------------------------------------------- frequency_groups


def test_groups_of_cifar10_in_label_order() -> None:
    groups = lt.frequency_groups(CIFAR10_LT)
    assert groups == {"frequent": [0, 1, 2, 3], "medium": [4, 5, 6], "rare": [7, 8, 9]}


def test_groups_of_a_permuted_split() -> None:
    perm = lt.class_rank_permutation(10, 0)  # [4, 6, 2, 7, 3, 5, 9, 0, 8, 1]
    counts = [0] * 10
    for rank, cls in enumerate(perm):
        counts[cls] = CIFAR10_LT[rank]
    groups = lt.frequency_groups(counts)
    assert groups == {"frequent": [2, 4, 6, 7], "medium": [3, 5, 9], "rare": [0, 1, 8]}


def test_groups_ties_and_sizes() -> None:
    # Equal counts share a group (all equal: all Frequent; tests/data/test_groups_rule.py).
    assert lt.frequency_groups([5, 5, 5]) == {"frequent": [0, 1, 2], "medium": [], "rare": []}
    sizes = {k: len(v) for k, v in lt.frequency_groups(list(range(100))).items()}
    assert sizes == {"frequent": 34, "medium": 33, "rare": 33}


# ---------------------------------------------------------------------- build_data


def image_keys(images: torch.Tensor) -> set[bytes]:
    return {row.tobytes() for row in images.numpy()}


def assert_consistent(data: LongTailData) -> None:
    """Invariants every labeled build keeps."""
    counts = torch.bincount(data.pretrain.labels, minlength=data.num_classes).tolist()
    assert data.class_counts == counts
    assert data.groups == lt.frequency_groups(counts)
    assert image_keys(data.few_shot.images) <= image_keys(data.pool.images)
    x = data.pretrain.images.double() / 255
    assert data.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert data.std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-9)


@pytest.fixture(scope="module")
def digits_pool() -> LongTailData:
    return build_data(DataConfig(dataset="digits"), seed=0)


def test_digits_pool_protocol(digits_pool: LongTailData) -> None:
    data = digits_pool
    assert_consistent(data)
    assert data.num_classes == 10 and data.image_size == 32
    assert len(data.pool) + len(data.val) + len(data.test) == 1797
    assert torch.bincount(data.val.labels).tolist() == [10] * 10
    assert abs(len(data.test) - 0.3 * 1797) <= 10
    pool_counts = torch.bincount(data.pool.labels).tolist()
    expected = lt.longtail_counts(min(pool_counts), 10, 100)
    assert sorted(data.class_counts, reverse=True) == expected
    ranked = [data.class_counts[c] for c in lt.class_rank_permutation(10, 0)]
    assert ranked == expected
    assert image_keys(data.pretrain.images) <= image_keys(data.pool.images)
    assert torch.bincount(data.few_shot.labels).tolist() == [1] * 10
    assert data.notes[-1].startswith(f"digits long-tailed subset: {sum(expected):,} images")


def test_digits_full_and_none() -> None:
    full = build_data(DataConfig(dataset="digits", longtail="full", split=-1))
    assert_consistent(full)
    train_counts = torch.bincount(torch.cat([full.pool.labels, full.val.labels])).tolist()
    assert full.class_counts == lt.longtail_counts(min(train_counts), 10, 100)  # label order
    none = build_data(DataConfig(dataset="digits", longtail="none"))
    assert_consistent(none)
    assert len(none.pretrain) == len(none.pool) + len(none.val)


def test_build_is_seeded(digits_pool: LongTailData) -> None:
    again = build_data(DataConfig(dataset="digits"), seed=0)
    assert torch.equal(again.pretrain.images, digits_pool.pretrain.images)
    other = build_data(DataConfig(dataset="digits"), seed=1)
    assert not torch.equal(other.pool.labels, digits_pool.pool.labels)


def test_cifar_python_format_caps_the_validation_set(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=40)  # 200 train images: 20 per class
    data = build_data(DataConfig(dataset="cifar10", root=str(tmp_path), imbalance=10))
    assert_consistent(data)
    assert torch.bincount(data.val.labels).tolist() == [2] * 10
    assert any("capped" in line for line in data.notes)
    assert sorted(data.class_counts, reverse=True) == lt.longtail_counts(18, 10, 10)
    assert data.classes[0] == "class0" and len(data.test) == 6


def test_max_per_class_too_large(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=40)
    with pytest.raises(ValueError, match="max_per_class=100 exceeds"):
        build_data(DataConfig(dataset="cifar10", root=str(tmp_path), max_per_class=100))


def test_folder_without_test_gets_a_stratified_split(tmp_path: Path) -> None:
    write_class_folder(tmp_path / "pets", {"cat": 30, "dog": 20, "eel": 10}, size=8)
    cfg = DataConfig(
        dataset="folder",
        root=str(tmp_path / "pets"),
        image_size=8,
        longtail="none",
        cache_dir=str(tmp_path / "cache"),
    )
    data = build_data(cfg)
    assert_consistent(data)
    assert data.classes == ["cat", "dog", "eel"] and data.name == "pets"
    assert torch.bincount(data.test.labels).tolist() == [6, 4, 2]
    assert data.class_counts == [24, 16, 8]  # "none": the folder's own long tail
    assert data.groups == {"frequent": [0], "medium": [1], "rare": [2]}


def test_unlabeled_folder_is_pretraining_only(tmp_path: Path) -> None:
    write_class_folder(tmp_path / "photos", {"a": 3, "b/deeper": 2}, size=8)
    cfg = DataConfig(
        dataset="folder",
        root=str(tmp_path / "photos"),
        image_size=8,
        labeled=False,
        cache_dir=str(tmp_path / "cache"),
    )
    data = build_data(cfg)
    assert not data.labeled and data.classes == [] and data.groups == {}
    assert len(data.pretrain) == 5 and (data.pretrain.labels == -1).all()
    assert len(data.pool) == len(data.test) == len(data.val) == len(data.few_shot) == 0
    assert data.class_counts == []


# ------------------------------------------------------- the real CIFAR-10 JPEG copy


@pytest.fixture(scope="module")
def cifar10_jpeg() -> Path:
    return cifar10_jpeg_root()


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "total"), [("pool", 11_165), ("full", 12_406)])
def test_cifar10_jpeg_longtail(cifar10_jpeg: Path, mode: str, total: int) -> None:
    data = build_data(DataConfig(dataset="folder", root=str(cifar10_jpeg), longtail=mode))
    assert len(data.pretrain) == total
    assert len(data.test) == 10_000 and len(data.val) == 5_000 and len(data.pool) == 45_000
    assert torch.bincount(data.few_shot.labels).tolist() == [45] * 10
    assert data.classes[0] == "airplane" and data.classes[-1] == "truck"
    assert data.class_counts == torch.bincount(data.pretrain.labels, minlength=10).tolist()
    assert {k: len(v) for k, v in data.groups.items()} == {"frequent": 4, "medium": 3, "rare": 3}
    if mode == "pool":
        assert image_keys(data.pretrain.images) <= image_keys(data.pool.images)
