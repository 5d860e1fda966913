"""Per-class and per-group accuracy (the paper's All / Frequent / Medium / Rare / Std)."""

from __future__ import annotations

import math

import torch

from fassl.data.bundle import GROUPS as GROUP_NAMES


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Accuracy of each class in percent, float64 (C,); nan for a class absent from labels.

    Labels < 0 (unknown) are ignored.
    """
    pred = pred.detach().cpu().long().flatten()
    labels = labels.detach().cpu().long().flatten()
    if pred.shape != labels.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and labels {tuple(labels.shape)} differ")
    known = labels >= 0
    pred, labels = pred[known], labels[known]
    if labels.numel() and int(labels.max()) >= num_classes:
        raise ValueError(f"label {int(labels.max())} out of range for {num_classes} classes")
    total = torch.bincount(labels, minlength=num_classes).double()
    correct = torch.bincount(labels[pred == labels], minlength=num_classes).double()
    return 100.0 * correct / total  # 0 / 0 = nan marks absent classes


def _nanmean(values: torch.Tensor) -> float:
    """Mean over the finite entries; nan when there are none."""
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else math.nan


def group_metrics(
    pred: torch.Tensor,
    labels: torch.Tensor,
    groups: dict[str, list[int]],
    num_classes: int,
) -> dict[str, float | list[float]]:
    """All (mean per-class accuracy), the mean of each group, Std of the groups, per_class.

    Std is the population std (ddof 0) over the group accuracies, as in the paper; with
    no groups only ``all`` and ``per_class`` are returned. Classes absent from
    ``labels`` are left out of every mean.
    """
    acc = per_class_accuracy(pred, labels, num_classes)
    out: dict[str, float | list[float]] = {"all": _nanmean(acc)}
    if groups:
        # The paper's three groups first, then any others, in a stable order.
        names = [g for g in GROUP_NAMES if g in groups] + [
            g for g in groups if g not in GROUP_NAMES
        ]
        group_acc = [_nanmean(acc[torch.as_tensor(groups[g], dtype=torch.long)]) for g in names]
        out.update(zip(names, group_acc, strict=True))
        out["std"] = float(torch.tensor(group_acc, dtype=torch.float64).std(correction=0))
    out["per_class"] = [float(a) for a in acc]
    return out
