"""Figures of images: the rarity contact sheet and histograms, the prototypes' retrieval
grid (the paper's Figure 4).

The contact sheet puts the rarest images beside a random sample of the same size, so a
reader sees what the ranking picks out against what the collection looks like.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fassl.analysis.prototypes import GridLabels, grid_order, retrieval_rows
from fassl.files import atomic_path
from fassl.prototypes import occupancy
from fassl.report.plotting import pyplot


def _panel(sub: Any, images: torch.Tensor, captions: list[str], title: str) -> None:
    """A square grid of images with a caption over each, in one sub-figure."""
    sub.suptitle(title, fontsize=10)
    n = len(images)
    cols = max(1, int(n**0.5 + 0.999))
    rows = max(1, (n + cols - 1) // cols)
    axes = sub.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, caption in zip(axes.flat, images, captions, strict=False):
        ax.imshow(img.permute(1, 2, 0).numpy())
        ax.set_title(caption, fontsize=5, pad=1)


def contact_sheet(
    images: Any,
    rarest: torch.Tensor,
    sample: torch.Tensor,
    captions: list[str],
    path: Path,
    weight: str,
) -> None:
    """The images of ``rarest`` (rank order) beside those of ``sample`` in one PNG.

    ``captions`` holds one line per image of the collection (rank and class, say).
    """
    plt = pyplot()
    n = max(len(rarest), len(sample))
    side = max(1, int(n**0.5 + 0.999))
    fig = plt.figure(figsize=(2 * side * 1.1 + 0.5, side * 1.2 + 0.8))
    left, right = fig.subfigures(1, 2, wspace=0.05)
    for sub, index, title in (
        (left, rarest, f"The {len(rarest)} rarest images (weight {weight}), rarest first"),
        (right, sample, f"{len(sample)} images drawn at random, for comparison"),
    ):
        picked = images[index] if len(index) else images[:0]
        _panel(sub, picked, [captions[int(i)] for i in index], title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def density_histograms(
    density: torch.Tensor, k: int, occupancy: torch.Tensor | None, path: Path
) -> None:
    """Histogram of local density and, with prototypes, the images per prototype sorted
    from the most occupied (a long tail shows as a steep drop)."""
    plt = pyplot()
    panels = 1 if occupancy is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6), squeeze=False)
    ax = axes[0][0]
    ax.hist(density.numpy(), bins=min(50, max(5, len(density) // 5)), color="tab:blue")
    ax.set_xlabel(f"local density: mean cosine to the {k} nearest other images")
    ax.set_ylabel("images")
    ax.set_title("Local density (low = rare)")
    if occupancy is not None:
        ax = axes[0][1]
        counts = occupancy.sort(descending=True).values.numpy()
        ax.bar(range(len(counts)), counts, width=1.0, color="tab:orange")
        ax.set_xlabel("prototypes, sorted from the most occupied")
        ax.set_ylabel("images whose nearest prototype it is")
        empty = int((occupancy == 0).sum())
        ax.set_title(f"Prototype occupancy ({len(counts)} prototypes, {empty} empty)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def save_retrieval_grid(
    images: torch.Tensor,
    features: torch.Tensor,
    prototypes: torch.Tensor,
    path: str,
    title: str = "Prototypes",
    labels: GridLabels | None = None,
    per_row: int = 8,
    max_rows: int = 24,
) -> None:
    """The paper's Figure 4: one row per prototype with its nearest images (uint8
    N,3,H,W), captioned with class and grouped by class group where labels exist."""
    plt = pyplot()
    rows = retrieval_rows(features, prototypes, per_row)
    counts = occupancy(features.float().cpu(), prototypes.float().cpu())
    order = grid_order(rows, counts, labels, max_rows)
    cols = rows.shape[1]
    size = (cols * 1.05 + 1.2, len(order) * 1.15 + 0.8)
    fig, axes = plt.subplots(len(order), cols, figsize=size, squeeze=False, layout="constrained")
    for (k, group), axrow in zip(order, axes, strict=True):
        picked = images[rows[k]].permute(0, 2, 3, 1).numpy()
        for ax, img, i in zip(axrow, picked, rows[k].tolist(), strict=True):
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if labels is not None:
                ax.set_title(labels.caption(i), fontsize=6, pad=1)
        head = f"prototype {k}" + (f"\n{group.capitalize()}" if group else "")
        axrow[0].set_ylabel(
            f"{head}\noccupancy {int(counts[k])}", fontsize=7, rotation=0, ha="right"
        )
    how = "grouped by the class group of each prototype's nearest image" if labels else "unlabeled"
    fig.suptitle(
        f"{title}: the {cols} nearest images of {len(order)} of {len(rows)} prototypes\n"
        f"(rows {how}; occupancy = images whose nearest prototype it is, largest first)",
        fontsize=9,
    )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
