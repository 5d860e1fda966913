"""Per-class and per-group accuracy (the paper's All / Frequent / Medium / Rare / Std)."""

from __future__ import annotations

import math

import torch

from fassl.data.datasets import GROUPS as GROUP_NAMES


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

    Std is the population std (ddof 0) over the group accuracies, as in the paper. Classes
    absent from ``labels`` are left out of every mean (``per_class`` keeps nan for them).
    A group without an accuracy (no class, as with fewer than three classes or a tie, or
    no test image of its classes) is left out of the dict, never nan; Std needs two
    groups with an accuracy and is left out otherwise. With no groups only ``all`` and
    ``per_class`` are returned.
    """
    acc = per_class_accuracy(pred, labels, num_classes)
    out: dict[str, float | list[float]] = {"all": _nanmean(acc)}
    # The paper's three groups first, then any others, in a stable order.
    names = [g for g in GROUP_NAMES if g in groups] + [g for g in groups if g not in GROUP_NAMES]
    group_acc = {g: _nanmean(acc[torch.as_tensor(groups[g], dtype=torch.long)]) for g in names}
    present = {g: a for g, a in group_acc.items() if not math.isnan(a)}
    out.update(present)
    if len(present) >= 2:
        values = torch.tensor(list(present.values()), dtype=torch.float64)
        out["std"] = float(values.std(correction=0))
    out["per_class"] = [float(a) for a in acc]
    return out
