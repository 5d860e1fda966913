"""The evaluation protocol end to end: linear probes, kNN, group metrics, results.json."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fassl.config import ProbeConfig
from fassl.data import LongTailData, Split
from fassl.eval.knn import capped_k, knn_predict
from fassl.eval.metrics import group_metrics
from fassl.eval.probe import (
    FastProbeSettings,
    LabeledFeatures,
    ProbeResult,
    ProbeSplits,
    SDCLRProbeSchedule,
    linear_probe_fast,
    linear_probe_sdclr,
)
from fassl.features import extract_features, normalize_images
from fassl.runtime import Runtime

SKIPPED_UNLABELED = "no labels: probes need a labeled dataset"
# SDCLR steps the probe's lr at epochs 10, 20 of 30 (standard) and 40, 60 of 100
# (few-shot); other epoch counts keep the same fractions.
MILESTONE_FRACTIONS = {"standard": (1 / 3, 2 / 3), "few_shot": (0.4, 0.6)}
KNN_TEMPERATURE = 0.1


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[eval] {message}", file=sys.stderr, flush=True)


def _meta(data: LongTailData) -> dict[str, Any]:
    return {
        "dataset": data.name,
        "num_classes": data.num_classes,
        "classes": list(data.classes),
        "class_counts": [int(c) for c in data.class_counts],
        "groups": {name: [int(c) for c in ids] for name, ids in data.groups.items()},
        "test_size": len(data.test),
    }


def _train_split(data: LongTailData, setting: str) -> Split:
    return data.pool if setting == "standard" else data.few_shot


def milestones_for(setting: str, epochs: int) -> list[int]:
    """The sdclr probe's lr steps for ``setting``, scaled to ``epochs``."""
    return [round(f * epochs) for f in MILESTONE_FRACTIONS[setting]]


def _probe_entry(
    result: ProbeResult, test: Split, data: LongTailData, train_size: int
) -> dict[str, Any]:
    return {
        "variant": result.variant,
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "val_acc": result.val_acc,
        "train_size": train_size,
        **group_metrics(result.test_pred, test.labels, data.groups, data.num_classes),
    }


def _each_setting(
    data: LongTailData,
    cfg: ProbeConfig,
    progress: bool,
    probe: Callable[[str, Split], ProbeResult],
) -> dict[str, Any]:
    """``probe(setting, train split)`` for every configured setting, as results entries."""
    out: dict[str, Any] = {}
    for setting in cfg.settings:
        train = _train_split(data, setting)
        if len(train) == 0:
            split_name = "pool" if setting == "standard" else "few_shot"
            out[setting] = {"skipped": f"the {split_name} split is empty"}
            continue
        start = time.perf_counter()
        result = probe(setting, train)
        out[setting] = _probe_entry(result, data.test, data, len(train))
        _log(
            progress,
            f"{setting} {result.variant} probe: all {out[setting]['all']:.2f} "
            f"(best epoch {result.best_epoch}, {time.perf_counter() - start:.1f}s)",
        )
    return out


def _fast_probes(
    feats: dict[str, torch.Tensor],
    data: LongTailData,
    cfg: ProbeConfig,
    seed: int,
    device: torch.device,
    progress: bool,
) -> dict[str, Any]:
    """The fast variant for every configured setting, on features per split name."""
    settings = FastProbeSettings(
        cfg.fast_epochs, cfg.fast_lr, cfg.fast_weight_decay, cfg.fast_batch_size
    )

    def probe(setting: str, train: Split) -> ProbeResult:
        return linear_probe_fast(
            LabeledFeatures(feats["pool" if setting == "standard" else "few_shot"], train.labels),
            LabeledFeatures(feats["val"], data.val.labels),
            LabeledFeatures(feats["test"], data.test.labels),
            data.num_classes,
            settings,
            seed,
            device,
        )

    return _each_setting(data, cfg, progress, probe)


def _sdclr_probes(
    backbone: nn.Module,
    data: LongTailData,
    cfg: ProbeConfig,
    seed: int,
    rt: Runtime,
    progress: bool,
) -> dict[str, Any]:
    """SDCLR's augmented probe for every configured setting."""

    def probe(setting: str, train: Split) -> ProbeResult:
        epochs = cfg.standard_epochs if setting == "standard" else cfg.few_shot_epochs
        splits = ProbeSplits(train, data.val, data.test, data.mean, data.std, data.num_classes)
        schedule = SDCLRProbeSchedule(
            epochs, milestones_for(setting, epochs), cfg.sdclr_lr, cfg.sdclr_batch_size
        )
        return linear_probe_sdclr(backbone, splits, schedule, seed, rt)

    return _each_setting(data, cfg, progress, probe)


def small_data_notes(data: LongTailData, cfg: ProbeConfig) -> list[str]:
    """Warnings for probes and splits too small to mean much, and what to change."""
    notes = []
    c = max(1, data.num_classes)
    k = capped_k(cfg.knn_k, data.pool.labels, data.num_classes)
    if k < cfg.knn_k:
        notes.append(
            f"kNN: k = {k} (probe.knn_k={cfg.knn_k} capped at the probe pool's smallest "
            f"class, {k} images)"
        )
    if "few_shot" in cfg.settings and 0 < len(data.few_shot) < 2 * c:
        notes.append(
            f"few-shot probe: {len(data.few_shot)} training images for {c} classes, too few "
            "to mean much; raise data.few_shot_fraction"
        )
    per_val = len(data.val) / c
    if len(data.val) and per_val < 5:
        notes.append(
            f"validation: {per_val:.1f} images per class choose the probe's epoch, a noisy "
            "choice; raise data.val_per_class (or give more images)"
        )
    if len(data.test) and len(data.test) / c < 10:
        notes.append(
            f"test: {len(data.test) / c:.1f} images per class, so one image moves a class's "
            f"accuracy by {100 * c / len(data.test):.0f} points"
        )
    return notes


def _knn_entry(
    feats: dict[str, torch.Tensor], data: LongTailData, k: int, device: torch.device
) -> dict[str, Any]:
    """Weighted kNN from the probe pool to the test split, with group metrics; k capped
    at the pool's smallest class (``capped_k``)."""
    k = capped_k(k, data.pool.labels, data.num_classes)
    pred = knn_predict(
        feats["pool"].to(device),
        data.pool.labels.to(device),
        feats["test"],
        k,
        KNN_TEMPERATURE,
        data.num_classes,
    ).cpu()
    return {
        "k": k,
        "temperature": KNN_TEMPERATURE,
        **group_metrics(pred, data.test.labels, data.groups, data.num_classes),
    }


def evaluate(
    backbone: nn.Module,
    data: LongTailData,
    cfg: ProbeConfig,
    rt: Runtime,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Linear probes (each setting of ``cfg``) and kNN on the frozen backbone.

    Returns the content of results.json: one entry per setting, ``knn`` (pool -> test)
    and ``meta``. Features for the fast variant and kNN are extracted once per split.
    """
    meta = _meta(data)
    if not data.labeled:
        return {"meta": meta, "skipped": SKIPPED_UNLABELED}
    needed = ["pool", "test"]
    if cfg.variant == "fast":
        needed.append("val")
        if "few_shot" in cfg.settings:
            needed.append("few_shot")
    feats: dict[str, torch.Tensor] = {}
    start = time.perf_counter()
    for name in needed:
        split: Split = getattr(data, name)
        feats[name] = extract_features(backbone, split.images, data.mean, data.std, rt)
    _log(progress, f"features of {', '.join(needed)} in {time.perf_counter() - start:.1f}s")
    if cfg.variant == "fast":
        results = _fast_probes(feats, data, cfg, seed, rt.device, progress)
    else:
        results = _sdclr_probes(backbone, data, cfg, seed, rt, progress)
    if len(data.pool) > 0:
        results["knn"] = _knn_entry(feats, data, cfg.knn_k, rt.device)
        _log(progress, f"knn (k={results['knn']['k']}): all {results['knn']['all']:.2f}")
    results["meta"] = meta
    notes = small_data_notes(data, cfg)
    if notes:
        results["notes"] = notes
        for note in notes:
            print(f"fassl: warning: {note}", file=sys.stderr)
    return results


def raw_pixel_reference(data: LongTailData, cfg: ProbeConfig, seed: int = 0) -> dict[str, Any]:
    """The fast probes on flattened normalised pixels: the floor an encoder must beat."""
    meta = {**_meta(data), "input": "raw pixels"}
    if not data.labeled:
        return {"meta": meta, "skipped": SKIPPED_UNLABELED}
    names = ["val", "test"]
    names += [n for s, n in (("standard", "pool"), ("few_shot", "few_shot")) if s in cfg.settings]
    feats = {
        n: normalize_images(getattr(data, n).images, data.mean, data.std).flatten(1) for n in names
    }
    results = _fast_probes(feats, data, cfg, seed, torch.device("cpu"), progress=False)
    results["meta"] = meta
    return results
