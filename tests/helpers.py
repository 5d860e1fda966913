"""Small synthetic datasets and configs for fast tests."""

from __future__ import annotations

import torch

from fassl.config import Config, load_config
from fassl.data import LongTailData, Split

COLOURS = torch.tensor(
    [[230, 40, 40], [40, 230, 40], [40, 40, 230], [230, 230, 40], [40, 230, 230], [230, 40, 230]]
)


def coloured_split(counts: list[int], size: int = 16, seed: int = 0) -> Split:
    """Images whose class is their dominant colour, with noise; ``counts`` per class."""
    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for c, n in enumerate(counts):
        base = COLOURS[c % len(COLOURS)].view(1, 3, 1, 1).float()
        noise = torch.randint(-40, 40, (n, 3, size, size), generator=g).float()
        images.append((base + noise).clamp(0, 255).to(torch.uint8))
        labels.append(torch.full((n,), c, dtype=torch.long))
    return Split(torch.cat(images), torch.cat(labels))


def tiny_data(counts: tuple[int, ...] = (24, 12, 6), size: int = 16) -> LongTailData:
    c = len(counts)
    balanced = [max(counts)] * c
    groups = {"frequent": [0], "medium": [1], "rare": [2]} if c == 3 else {}
    return LongTailData(
        name="tiny",
        classes=[f"c{i}" for i in range(c)],
        pretrain=coloured_split(list(counts), size, seed=0),
        pool=coloured_split(balanced, size, seed=1),
        few_shot=coloured_split([2] * c, size, seed=2),
        val=coloured_split([4] * c, size, seed=3),
        test=coloured_split([6] * c, size, seed=4),
        class_counts=list(counts),
        groups=groups,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )


def tiny_config(tmp_path, *overrides: str) -> Config:
    return load_config(
        None,
        [
            f"out_dir={tmp_path}",
            "model.width=4",
            "model.proj_hidden=16",
            "model.proj_dim=8",
            "optim.batch_size=8",
            "optim.epochs=2",
            "optim.warmup_epochs=1",
            "optim.lr=0.05",
            "train.device=cpu",
            "train.precision=fp32",
            "train.progress=false",
            "prototypes.num_prototypes=6",
            "byol.pred_hidden=16",
            "rebalance.pred_hidden=16",
            "swav.num_prototypes=5",
            "swav.freeze_prototypes_steps=1",
            *overrides,
        ],
    )
