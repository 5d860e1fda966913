"""Group metrics, kNN and precision selection against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from fassl.eval.knn import knn_predict
from fassl.eval.metrics import group_metrics, per_class_accuracy
from fassl.runtime import cpu_has_bf16_units, resolve_autocast

GROUPS = {"frequent": [0, 1, 2, 3], "medium": [4, 5, 6], "rare": [7, 8, 9]}


def _predictions(correct: list[int], per_class: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c has ``per_class`` test images of which the first correct[c] are right."""
    num_classes = len(correct)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    pred = labels.clone()
    for c, n_right in enumerate(correct):
        rows = slice(c * per_class + n_right, (c + 1) * per_class)
        pred[rows] = (c + 1) % num_classes
    return pred, labels


def test_per_class_accuracy_hand_values() -> None:
    pred, labels = _predictions([10, 9, 8, 7, 6, 5, 4, 3, 2, 1])
    acc = per_class_accuracy(pred, labels, 10)
    assert acc.tolist() == pytest.approx([100, 90, 80, 70, 60, 50, 40, 30, 20, 10])


def test_per_class_accuracy_absent_class_is_nan() -> None:
    acc = per_class_accuracy(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 3)
    assert acc[0].item() == pytest.approx(50.0)
    assert acc[1].item() == pytest.approx(100.0)
    assert math.isnan(acc[2].item())


def test_per_class_accuracy_ignores_unknown_labels() -> None:
    acc = per_class_accuracy(torch.tensor([0, 1, 1]), torch.tensor([0, -1, 1]), 2)
    assert acc.tolist() == pytest.approx([100.0, 100.0])


def test_group_metrics_hand_values() -> None:
    pred, labels = _predictions([10, 9, 8, 7, 6, 5, 4, 3, 2, 1])
    m = group_metrics(pred, labels, GROUPS, 10)
    assert m["all"] == pytest.approx(55.0)
    assert m["frequent"] == pytest.approx(85.0)  # (100 + 90 + 80 + 70) / 4
    assert m["medium"] == pytest.approx(50.0)  # (60 + 50 + 40) / 3
    assert m["rare"] == pytest.approx(20.0)  # (30 + 20 + 10) / 3
    # mean 155/3; deviations (100, -5, -95)/3; variance (10000 + 25 + 9025) / 27
    assert m["std"] == pytest.approx(math.sqrt(19050 / 27))
    assert m["per_class"] == pytest.approx([100, 90, 80, 70, 60, 50, 40, 30, 20, 10])
    assert all(isinstance(v, float) for k, v in m.items() if k != "per_class")


def test_group_metrics_equal_groups_have_zero_std() -> None:
    pred, labels = _predictions([5] * 10)
    m = group_metrics(pred, labels, GROUPS, 10)
    assert m["all"] == m["frequent"] == m["medium"] == m["rare"] == pytest.approx(50.0)
    assert m["std"] == pytest.approx(0.0)


def test_group_metrics_without_groups() -> None:
    pred, labels = _predictions([4, 0, 2], per_class=4)
    m = group_metrics(pred, labels, {}, 3)
    assert set(m) == {"all", "per_class"}
    assert m["all"] == pytest.approx((100 + 0 + 50) / 3)


def test_group_metrics_skip_absent_classes() -> None:
    # Class 2 has no test image: left out of All and of its group.
    labels = torch.tensor([0, 0, 1, 1, 3])
    pred = torch.tensor([0, 1, 1, 1, 0])
    groups = {"frequent": [0], "medium": [1], "rare": [2, 3]}
    m = group_metrics(pred, labels, groups, 4)
    assert m["all"] == pytest.approx((50 + 100 + 0) / 3)
    assert m["rare"] == pytest.approx(0.0)
    assert math.isnan(m["per_class"][2])


def test_knn_one_nearest_neighbour_by_hand() -> None:
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 2])
    test = torch.tensor([[0.9, 0.1], [0.1, 0.9], [-1.0, -0.2], [5.0, 0.4]])
    pred = knn_predict(train, labels, test, k=1, num_classes=3)
    assert pred.tolist() == [0, 1, 2, 0]  # cosine: the scale of a row does not matter


def test_knn_weights_follow_temperature() -> None:
    # Query [1, 0] has cosines 1 (class 0), 0.8 and 0.6 (class 1).
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    # t = 0.1: e^10 = 22026 > e^8 + e^6 = 3384 -> class 0.
    assert knn_predict(train, labels, query, k=3, temperature=0.1).tolist() == [0]
    # t = 1: e^1 = 2.72 < e^0.8 + e^0.6 = 4.05 -> class 1.
    assert knn_predict(train, labels, query, k=3, temperature=1.0).tolist() == [1]


def test_knn_separable_clusters_and_chunking() -> None:
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 16, generator=gen) * 5
    train_y = torch.arange(5).repeat(40)
    test_y = torch.arange(5).repeat(20)
    train_x = centers[train_y] + torch.randn(200, 16, generator=gen)
    test_x = centers[test_y] + torch.randn(100, 16, generator=gen)
    pred = knn_predict(train_x, train_y, test_x, k=20, num_classes=5)
    assert (pred == test_y).float().mean().item() == 1.0
    chunked = knn_predict(train_x, train_y, test_x, k=20, num_classes=5, chunk_size=7)
    assert torch.equal(pred, chunked)
    # k larger than the bank is clamped, not an error.
    assert knn_predict(train_x[:3], train_y[:3], test_x, k=200).shape == (100,)


def test_resolve_autocast() -> None:
    assert resolve_autocast("cpu", "fp32") is None
    assert resolve_autocast(torch.device("cpu"), "bf16") is torch.bfloat16
    expected = torch.bfloat16 if cpu_has_bf16_units() else None
    assert resolve_autocast("cpu", "auto") is expected
    with pytest.raises(ValueError):
        resolve_autocast("cpu", "fp16")


def test_cpu_has_bf16_units_reads_cpuinfo() -> None:
    assert isinstance(cpu_has_bf16_units(), bool)
