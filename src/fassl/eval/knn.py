"""Weighted k-nearest-neighbour classifier on cosine similarity (InstDisc / SimCLR monitor)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fassl.data import LongTailData, Split
from fassl.eval.metrics import per_class_accuracy
from fassl.features import extract_features
from fassl.runtime import Runtime


@torch.no_grad()
def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    k: int,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 512,
) -> torch.Tensor:
    """Class of each test row by a vote of its k most cosine-similar train rows.

    Each neighbour votes with weight exp(sim / temperature). Test rows are processed
    ``chunk_size`` at a time so memory stays at chunk_size x N_train similarities.
    Runs on the device of ``train_feats``; returns int64 predictions there.
    """
    known = train_labels >= 0
    train_feats, train_labels = train_feats[known], train_labels[known]
    if train_feats.shape[0] == 0:
        raise ValueError("kNN needs at least one labelled training feature")
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    device = train_feats.device
    bank = F.normalize(train_feats.float(), dim=1)
    bank_labels = train_labels.to(device).long()
    k = min(k, bank.shape[0])
    preds = []
    for start in range(0, test_feats.shape[0], chunk_size):
        query = F.normalize(test_feats[start : start + chunk_size].to(device).float(), dim=1)
        sim, idx = (query @ bank.T).topk(k, dim=1)
        # Subtracting the row maximum keeps exp finite at small temperatures; it scales
        # every vote of a row by the same factor, so the argmax is unchanged.
        weights = ((sim - sim[:, :1]) / temperature).exp()
        votes = torch.zeros(query.shape[0], num_classes, device=device)
        votes.scatter_add_(1, bank_labels[idx], weights)
        preds.append(votes.argmax(dim=1))
    if not preds:
        return torch.empty(0, dtype=torch.long, device=device)
    return torch.cat(preds)


def capped_k(k: int, labels: torch.Tensor, num_classes: int) -> int:
    """kNN's k, at most the images the bank holds of its smallest class: with more, every
    vote is dominated by the largest classes (158 images and k = 200 is a majority vote)."""
    counts = torch.bincount(labels[labels >= 0], minlength=num_classes)
    present = counts[counts > 0]
    return max(1, min(k, int(present.min()))) if len(present) else k


def knn_val_accuracy(
    backbone: torch.nn.Module,
    data: LongTailData,
    k: int,
    rt: Runtime,
    bank: Split | None = None,
) -> float | None:
    """Mean per-class kNN accuracy (%) of ``backbone`` on the validation images, with at
    most 10,000 images of the probe pool as the bank (``knn_bank``, or ``bank`` when the
    caller drew it already); None without labels or splits."""
    if not data.labeled or len(data.val) == 0 or len(data.pool) == 0:
        return None
    train = bank if bank is not None else knn_bank(data)
    f_train = extract_features(backbone, train.images, data.mean, data.std, rt)
    f_val = extract_features(backbone, data.val.images, data.mean, data.std, rt)
    k = capped_k(k, train.labels, data.num_classes)
    pred = knn_predict(f_train, train.labels, f_val, k, num_classes=data.num_classes)
    return float(per_class_accuracy(pred, data.val.labels, data.num_classes).nanmean())


def knn_bank(data: LongTailData) -> Split:
    """The kNN bank: a fixed draw of at most 10,000 probe-pool images."""
    g = torch.Generator().manual_seed(0)
    keep = torch.randperm(len(data.pool), generator=g)[:10_000]
    return data.pool.subset(keep)


def knn_monitor(data: LongTailData, k: int) -> Callable[[Any], dict[str, float]]:
    """A training monitor: ``knn_val_acc`` of the trainer's method's backbone.

    The bank is drawn once, and the accuracy is kept per (method, optimizer step): a
    second call before the weights change (e.g. the same epoch monitored twice) extracts
    no features again.
    """
    bank: list[Split] = []
    cache: dict[tuple[int, int], float | None] = {}

    def monitor(trainer: Any) -> dict[str, float]:
        key = (id(trainer.method), int(getattr(trainer, "global_step", -1)))
        if key[1] < 0 or key not in cache:
            if not bank and data.labeled and len(data.pool):
                bank.append(knn_bank(data))
            cache.clear()
            cache[key] = knn_val_accuracy(
                trainer.method.backbone, data, k, trainer.rt, bank[0] if bank else None
            )
        acc = cache[key]
        if acc is None:
            return {}
        tqdm.write(f"[{trainer.stage}] epoch {trainer.epoch + 1}: kNN val accuracy {acc:.2f}%")
        return {"knn_val_acc": acc}

    return monitor
