"""The group rule: equal counts share a group, fewer than three classes never make the
smaller class Frequent, and an empty group is absent (never NaN) in the metrics and the
reports."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fassl.compare.tables import markdown_tables, summarize, write_csv
from fassl.data.splits import longtail as lt
from fassl.eval.metrics import group_metrics
from fassl.report import run_report
from fassl.report.results import group_lines, results_table, write_json


def numbers(metrics: dict) -> list[float]:
    """Every number of a metrics dict, per-class accuracies included."""
    values = [v for k, v in metrics.items() if k != "per_class"]
    return [*values, *metrics["per_class"]]


def test_a_tie_at_a_boundary_stays_in_one_group() -> None:
    # ascending places R R M M F F; counts 2 and 2 sit on places 1 (Rare) and 2 (Medium):
    # an equal split, so the block goes to the more frequent group
    counts = [1, 2, 2, 3, 4, 5]
    assert lt.frequency_groups(counts) == {
        "frequent": [4, 5],
        "medium": [1, 2, 3],
        "rare": [0],
    }
    # places RRR MMM FFF; the three 3s hold one Rare and two Medium places: Medium
    counts = [1, 2, 3, 3, 3, 4, 5, 6, 7]
    assert lt.frequency_groups(counts) == {
        "frequent": [6, 7, 8],
        "medium": [2, 3, 4, 5],
        "rare": [0, 1],
    }


def test_ties_never_split_and_order_by_count_is_kept() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(1, 13, (1,), generator=gen))
        counts = torch.randint(1, 5, (n,), generator=gen).tolist()
        groups = lt.group_classes(counts, "thirds")
        where = {c: g for g, ids in groups.items() for c in ids}
        assert sorted(where) == list(range(n))
        rank = {"rare": 0, "medium": 1, "frequent": 2}
        for a in range(n):
            for b in range(n):
                if counts[a] == counts[b]:
                    assert where[a] == where[b], counts
                if counts[a] < counts[b]:
                    assert rank[where[a]] <= rank[where[b]], counts


def test_all_equal_counts_are_all_frequent() -> None:
    assert lt.frequency_groups([5, 5, 5]) == {"frequent": [0, 1, 2], "medium": [], "rare": []}
    assert lt.group_classes([7] * 9, "thirds")["frequent"] == list(range(9))


def test_two_classes_the_larger_is_frequent_the_smaller_rare() -> None:
    expected = {"frequent": [1], "medium": [], "rare": [0]}
    assert lt.group_classes([8, 120], "thirds") == expected
    assert lt.frequency_groups([120, 8]) == {"frequent": [0], "medium": [], "rare": [1]}
    assert lt.frequency_groups([8, 8]) == {"frequent": [0, 1], "medium": [], "rare": []}
    # the counts rule keeps its absolute thresholds
    assert lt.group_classes([8, 120], "counts", (100, 20)) == expected


def test_metrics_of_two_classes_have_no_nan() -> None:
    groups = lt.group_classes([8, 120], "thirds")
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    pred = torch.tensor([0, 0, 1, 1, 1, 1, 1, 0])
    m = group_metrics(pred, labels, groups, 2)
    assert not any(math.isnan(v) for v in numbers(m))
    assert "medium" not in m
    assert m["rare"] == pytest.approx(50.0) and m["frequent"] == pytest.approx(75.0)
    assert m["std"] == pytest.approx(12.5)


def test_one_class_is_frequent_and_its_metrics_have_no_nan() -> None:
    groups = lt.group_classes([30], "thirds")
    assert groups == {"frequent": [0], "medium": [], "rare": []}
    assert lt.group_classes([30], "counts", (100, 20)) == {
        "frequent": [],
        "medium": [0],
        "rare": [],
    }
    m = group_metrics(torch.tensor([0, 0]), torch.tensor([0, 0]), groups, 1)
    assert not any(math.isnan(v) for v in numbers(m))
    assert set(m) == {"all", "frequent", "per_class"}  # the spread of one group says nothing


def test_a_group_without_test_images_is_absent() -> None:
    groups = {"frequent": [0], "medium": [1], "rare": [2]}
    m = group_metrics(torch.tensor([0, 1]), torch.tensor([0, 1]), groups, 3)
    assert "rare" not in m and m["std"] == pytest.approx(0.0)


def meta_of(classes: list[str], counts: list[int]) -> dict:
    return {"classes": classes, "class_counts": counts, "groups": lt.frequency_groups(counts)}


def test_reports_show_an_empty_group_as_a_dash_and_say_why() -> None:
    meta = meta_of(["cat", "dog"], [8, 120])
    lines = group_lines(meta)
    assert lines == [
        "Frequent: dog (120)",
        "Rare: cat (8)",
        "Only 2 classes (fewer than three): Medium has no class (no accuracy in the tables)",
    ]
    one = group_lines(meta_of(["cat"], [8]))
    assert one[-1].startswith("Only 1 class (fewer than three): Medium and Rare have no class")
    m = group_metrics(torch.tensor([0, 1]), torch.tensor([0, 1]), meta["groups"], 2)
    results = {"standard": {"variant": "fast", **m}, "meta": meta}
    table = results_table(results)
    assert "| standard | fast | 100.00 | 100.00 | – | 100.00 | 0.00 |" in table
    assert "nan" not in table.lower()
    report = run_report("two classes", [], results)
    assert "Only 2 classes" in report and "nan" not in report.lower()


def test_comparison_tables_show_absent_groups_without_nan(tmp_path) -> None:
    m = group_metrics(torch.tensor([0, 1]), torch.tensor([0, 1]), lt.frequency_groups([8, 8]), 2)
    write_json({"standard": m}, tmp_path / "results.json")
    # a results.json of an earlier version: the empty groups' nan written as null
    older = {"standard": {**m, "medium": None, "rare": None, "std": None}}
    runs = [
        {
            "method": "simclr",
            "seed": 0,
            "results": json.loads((tmp_path / "results.json").read_text()),
        },
        {"method": "simclr", "seed": 1, "results": json.loads(json.dumps(older))},
    ]
    summary = summarize(runs)
    text = markdown_tables(summary)
    assert "| simclr | 2 | 100.00 ± 0.00 | 100.00 ± 0.00 | — | — | — |" in text
    write_csv(summary, tmp_path / "comparison.csv")
    assert "nan" not in (tmp_path / "comparison.csv").read_text().lower()
