"""Frequent / Medium / Rare rules: thirds of the classes, or SDCLR's absolute counts."""

from __future__ import annotations

import pytest

from fassl.config import load_config
from fassl.data.sources.splitfile import read_list
from fassl.data.splits import longtail as lt
from fassl.errors import ConfigError
from tests.data_fixtures import REPO

IMAGENET_100 = REPO.parent / "shared" / "data" / "sdclr-splits" / "imagenet-100"


def test_counts_rule_by_hand() -> None:
    counts = [500, 101, 100, 20, 19, 0, 250]
    groups = lt.group_classes(counts, "counts", (100, 20))
    assert groups == {"frequent": [0, 1, 6], "medium": [2, 3], "rare": [4, 5]}
    assert lt.group_classes(counts, "counts", (200, 100)) == {
        "frequent": [0, 6],
        "medium": [1, 2],
        "rare": [3, 4, 5],
    }


def test_counts_rule_may_leave_a_group_empty() -> None:
    assert lt.count_groups([5, 6, 7], 100, 20) == {"frequent": [], "medium": [], "rare": [0, 1, 2]}
    with pytest.raises(ValueError, match="rare_below <= frequent_above"):
        lt.count_groups([1], 10, 20)


def test_thirds_rule_by_hand() -> None:
    counts = [10, 50, 30, 40, 20, 60, 5]  # ascending: 6, 0, 4, 2, 3, 1, 5; C // 3 = 2
    assert lt.group_classes(counts, "thirds") == {
        "frequent": [1, 3, 5],
        "medium": [2, 4],
        "rare": [0, 6],
    }
    with pytest.raises(ValueError, match="unknown group rule 'halves'"):
        lt.group_classes(counts, "halves")


def test_config_keys() -> None:
    cfg = load_config(overrides=["data.groups=counts", "data.group_thresholds=[50,10]"])
    assert cfg.data.groups == "counts" and cfg.data.group_thresholds == [50, 10]
    with pytest.raises(ConfigError, match=r"data\.groups"):
        load_config(overrides=["data.groups=quartiles"])
    with pytest.raises(ConfigError, match=r"data\.group_thresholds"):
        load_config(overrides=["data.group_thresholds=[10,50]"])


def test_imagenet_100_lt_groups() -> None:
    path = IMAGENET_100 / "imageNet_100_LT_train.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    counts = lt.counts_per_class(read_list(path).labels, 100)
    assert sum(counts) == 12_205 and max(counts) == 1_280 and min(counts) == 6
    # sorted counts checked by hand: 39 classes above 100 (102 ... 1280), 13 below 20
    # (6 ... 19), the 48 others from 20 to 100 inclusive (100 itself is medium)
    sizes = {k: len(v) for k, v in lt.group_classes(counts, "counts", (100, 20)).items()}
    assert sizes == {"frequent": 39, "medium": 48, "rare": 13}
    assert sum(1 for c in counts if c == 100) == 1
    thirds = {k: len(v) for k, v in lt.group_classes(counts, "thirds").items()}
    assert thirds == {"frequent": 34, "medium": 33, "rare": 33}
