"""Which images do the prototypes stand for? (the paper's Table 4 and Figure 4)."""

from __future__ import annotations

import torch

from fassl.data.bundle import GROUPS
from fassl.prototypes import nearest_images


def prototype_group_shares(
    features: torch.Tensor,
    prototypes: torch.Tensor,
    labels: torch.Tensor,
    groups: dict[str, list[int]],
) -> dict[str, float]:
    """Share of prototypes whose nearest image is from a Frequent / Medium / Rare class."""
    idx = nearest_images(features, prototypes).cpu()
    cls = labels.cpu()[idx]
    return {g: torch.isin(cls, torch.tensor(groups[g])).float().mean().item() for g in GROUPS}


def save_retrieval_grid(
    images: torch.Tensor, index: torch.Tensor, path: str, columns: int = 16
) -> None:
    """Save the retrieved images (uint8 N,3,H,W) of ``index`` as one PNG grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picked = images[index.cpu()].permute(0, 2, 3, 1).numpy()
    rows = (len(picked) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.6, rows * 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img in zip(axes.flat, picked, strict=False):
        ax.imshow(img)
    fig.tight_layout(pad=0.1)
    fig.savefig(path, dpi=100)
    plt.close(fig)
