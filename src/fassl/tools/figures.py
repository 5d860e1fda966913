"""Figures of ``fassl rare``: a contact sheet and label-free histograms.

The contact sheet puts the rarest images beside a random sample of the same size, so a
reader sees what the ranking picks out against what the collection looks like.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    plt = _pyplot()
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def density_histograms(
    density: torch.Tensor, k: int, occupancy: torch.Tensor | None, path: Path
) -> None:
    """Histogram of local density and, with prototypes, the images per prototype sorted
    from the most occupied (a long tail shows as a steep drop)."""
    plt = _pyplot()
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
