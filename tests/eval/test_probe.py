"""Linear probes, feature extraction and the evaluate() entry point on synthetic data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from fassl.config import ProbeConfig
from fassl.data import LongTailData, Split
from fassl.eval.evaluate import evaluate, milestones_for, raw_pixel_reference
from fassl.eval.probe import (
    FastProbeSettings,
    LabeledFeatures,
    ProbeSplits,
    SDCLRProbeSchedule,
    linear_probe_fast,
    linear_probe_sdclr,
)
from fassl.features import extract_features
from fassl.report import results_table as format_results_table
from fassl.report import write_json as write_results
from fassl.runtime import Runtime

CPU = torch.device("cpu")
CPU_RT = Runtime.cpu()
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def _clusters(
    num_classes: int,
    dim: int,
    per_class: int,
    spread: float,
    gen: torch.Generator,
    centers: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(num_classes).repeat(per_class)
    return centers[labels] * spread + torch.randn(len(labels), dim, generator=gen), labels


def test_fast_probe_separates_gaussian_clusters() -> None:
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(10, 64, generator=gen)
    train = _clusters(10, 64, 50, 2.0, gen, centers)
    val = _clusters(10, 64, 10, 2.0, gen, centers)
    test = _clusters(10, 64, 20, 2.0, gen, centers)
    r = linear_probe_fast(
        LabeledFeatures(*train),
        LabeledFeatures(*val),
        LabeledFeatures(*test),
        num_classes=10,
        settings=FastProbeSettings(epochs=10, lr=0.1, weight_decay=1e-4, batch_size=64),
        seed=0,
        device=CPU,
    )
    assert r.test_acc > 90.0
    assert r.test_pred.shape == (200,) and r.test_pred.dtype == torch.long
    assert r.variant == "fast" and r.epochs == 10 and len(r.val_history) == 10


def test_fast_probe_keeps_the_best_validation_epoch() -> None:
    # Few noisy training points and a large lr: validation accuracy peaks early, then
    # the head overfits, so the best epoch is not the last one.
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=gen)
    train = _clusters(4, 16, 20, 0.5, gen, centers)
    val = _clusters(4, 16, 50, 0.5, gen, centers)
    r = linear_probe_fast(
        LabeledFeatures(*train),
        LabeledFeatures(*val),
        LabeledFeatures(*val),
        num_classes=4,
        settings=FastProbeSettings(epochs=30, lr=1.0, weight_decay=0.0, batch_size=16),
        seed=0,
        device=CPU,
    )
    best = max(range(30), key=lambda i: (r.val_history[i], -i))  # first maximum
    assert r.best_epoch == best + 1 < 30
    assert r.val_acc == pytest.approx(max(r.val_history))
    assert r.val_acc > r.val_history[-1]
    # Test = val: the test predictions must come from the best epoch's weights.
    assert r.test_acc == pytest.approx(r.val_acc)


def test_fast_probe_without_validation_uses_last_epoch() -> None:
    gen = torch.Generator().manual_seed(1)
    centers = torch.randn(3, 8, generator=gen)
    train = _clusters(3, 8, 10, 2.0, gen, centers)
    test = _clusters(3, 8, 5, 2.0, gen, centers)
    r = linear_probe_fast(
        LabeledFeatures(*train),
        LabeledFeatures(torch.empty(0, 8), torch.empty(0, dtype=torch.long)),
        LabeledFeatures(*test),
        num_classes=3,
        settings=FastProbeSettings(epochs=4, lr=0.1, weight_decay=0.0, batch_size=8),
        seed=0,
        device=CPU,
    )
    assert r.best_epoch == 4 and math.isnan(r.val_acc)


def _tiny_backbone() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def _colour_split(num_classes: int, per_class: int, size: int, gen: torch.Generator) -> Split:
    """Class c is a noisy image whose dominant colour is base colour c: a random conv
    net's pooled features separate the classes."""
    palette = torch.tensor([[220, 40, 40], [40, 220, 40], [40, 40, 220], [200, 200, 40]])
    labels = torch.arange(num_classes).repeat(per_class)
    noise = torch.randint(-30, 31, (len(labels), 3, size, size), generator=gen)
    images = (palette[labels].view(-1, 3, 1, 1) + noise).clamp(0, 255).to(torch.uint8)
    return Split(images, labels)


def _synthetic_data(labeled: bool = True) -> LongTailData:
    gen = torch.Generator().manual_seed(0)
    pool = _colour_split(3, 12, 8, gen)
    few_shot = pool.subset(torch.arange(6))
    return LongTailData(
        name="synthetic",
        classes=["red", "green", "blue"],
        pretrain=pool.subset(torch.tensor([0, 1, 2, 3, 4, 6])),
        pool=pool,
        few_shot=few_shot,
        val=_colour_split(3, 4, 8, gen),
        test=_colour_split(3, 6, 8, gen),
        class_counts=[3, 2, 1],
        groups={"frequent": [0], "medium": [1], "rare": [2]},
        mean=MEAN,
        std=STD,
        labeled=labeled,
    )


def test_extract_features_restores_mode_and_shapes() -> None:
    net = _tiny_backbone().train()
    data = _synthetic_data()
    feats = extract_features(net, data.test.images, MEAN, STD, CPU_RT, batch_size=7)
    assert feats.shape == (18, 8) and feats.dtype == torch.float32
    assert net.training
    assert extract_features(net, data.test.images[:0], MEAN, STD, CPU_RT).shape == (0, 8)


def test_sdclr_probe_leaves_backbone_untouched() -> None:
    net = _tiny_backbone().train()
    net[0].bias.requires_grad_(False)
    flags = {name: p.requires_grad for name, p in net.named_parameters()}
    before = {k: v.clone() for k, v in net.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    train, val, test = (_colour_split(3, 8, 8, gen) for _ in range(3))
    r = linear_probe_sdclr(
        net,
        ProbeSplits(train, val, test, MEAN, STD, num_classes=3),
        SDCLRProbeSchedule(epochs=3, milestones=[1, 2], lr=1.0, batch_size=8),
        seed=0,
        rt=CPU_RT,
    )
    assert r.test_pred.shape == (24,) and r.test_pred.dtype == torch.long
    assert 1 <= r.best_epoch <= 3 and r.variant == "sdclr" and len(r.val_history) == 3
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN stats
    assert {name: p.requires_grad for name, p in net.named_parameters()} == flags
    assert all(p.grad is None for p in net.parameters())
    assert net.training


def test_milestones_follow_sdclr_recipe() -> None:
    assert milestones_for("standard", 30) == [10, 20]
    assert milestones_for("few_shot", 100) == [40, 60]


METRIC_KEYS = {
    "variant",
    "epochs",
    "best_epoch",
    "val_acc",
    "all",
    "frequent",
    "medium",
    "rare",
    "std",
    "per_class",
}


@pytest.mark.parametrize("variant", ["fast", "sdclr"])
def test_evaluate_reports_every_setting(variant: str, tmp_path: Path) -> None:
    cfg = ProbeConfig(
        variant=variant,
        fast_epochs=20,
        fast_batch_size=16,
        standard_epochs=3,
        few_shot_epochs=3,
        sdclr_lr=1.0,
        sdclr_batch_size=16,
        knn_k=5,
    )
    data = _synthetic_data()
    results = evaluate(_tiny_backbone(), data, cfg, CPU_RT)
    for setting in ("standard", "few_shot"):
        entry = results[setting]
        assert set(entry) >= METRIC_KEYS
        assert entry["variant"] == variant and len(entry["per_class"]) == 3
    assert results["standard"]["train_size"] == 36 and results["few_shot"]["train_size"] == 6
    assert {"all", "frequent", "medium", "rare", "std", "per_class"} <= set(results["knn"])
    assert results["knn"]["all"] > 90.0  # colours are separable by a random conv net
    assert results["meta"]["test_size"] == 18 and results["meta"]["num_classes"] == 3

    table = format_results_table(results)
    assert f"{results['standard']['all']:.2f}" in table
    assert f"{results['few_shot']['rare']:.2f}" in table
    assert f"{results['knn']['std']:.2f}" in table

    path = tmp_path / "out" / "results.json"
    write_results(results, path)
    assert json.loads(path.read_text())["standard"]["all"] == pytest.approx(
        results["standard"]["all"]
    )
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temp left


def test_evaluate_skips_unlabeled_data() -> None:
    results = evaluate(_tiny_backbone(), _synthetic_data(labeled=False), ProbeConfig(), CPU_RT)
    assert set(results) == {"meta", "skipped"}
    assert "no labels" in format_results_table(results)


def test_raw_pixel_reference_row_in_table() -> None:
    cfg = ProbeConfig(fast_epochs=5, fast_batch_size=16)
    data = _synthetic_data()
    reference = raw_pixel_reference(data, cfg, seed=0)
    assert reference["standard"]["variant"] == "fast"
    assert reference["meta"]["input"] == "raw pixels"
    results = evaluate(_tiny_backbone(), data, cfg, CPU_RT)
    table = format_results_table(results, {"raw pixels": reference})
    assert "standard (raw pixels)" in table
    assert f"{reference['standard']['all']:.2f}" in table


def test_write_results_turns_nan_into_null(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_results({"knn": {"all": float("nan"), "per_class": [1.0, float("nan")]}}, path)
    assert json.loads(path.read_text()) == {"knn": {"all": None, "per_class": [1.0, None]}}


def test_format_results_table_shows_numbers() -> None:
    row = {
        "variant": "sdclr",
        "all": 81.234,
        "frequent": 90.5,
        "medium": 77.0,
        "rare": 70.125,
        "std": 8.4567,
        "per_class": [],
    }
    results = {"standard": row, "knn": {**row, "k": 200, "all": float("nan")}, "meta": {}}
    table = format_results_table(results, {"raw pixels": {"standard": {**row, "all": 33.3}}})
    lines = table.splitlines()
    assert lines[0] == "| setting | variant | All | Frequent | Medium | Rare | Std |"
    assert "| standard | sdclr | 81.23 | 90.50 | 77.00 | 70.12 | 8.46 |" in lines
    assert "| knn | k=200 | – | 90.50 | 77.00 | 70.12 | 8.46 |" in lines
    assert "| standard (raw pixels) | sdclr | 33.30 | 90.50 | 77.00 | 70.12 | 8.46 |" in lines
