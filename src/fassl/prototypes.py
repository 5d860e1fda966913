"""The prototype matrix P of FASSL (and SwAV): scores, nearest prototypes, occupancy.

One place for "which prototype is this image closest to" and its transposes, used by
stage 1 and stage 2 of FASSL, SwAV's normalisation, the re-balancing weights and the
analyses. Similarities are cosines computed in float32 (Eq. 1 with unit-length rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fassl.losses import prototype_scores


def init_prototypes(
    num_prototypes: int, dim: int, generator: torch.Generator | None = None
) -> Tensor:
    """Random unit-norm prototype rows (K x D): P of Eq. 1 before training."""
    if num_prototypes < 1 or dim < 1:
        raise ValueError(f"prototypes need K >= 1 and D >= 1, got K={num_prototypes}, D={dim}")
    p = torch.randn(num_prototypes, dim, generator=generator)
    return F.normalize(p, dim=1)


def cosine_scores(z: Tensor, prototypes: Tensor) -> Tensor:
    """(N, K) cosine similarity of every embedding to every prototype, float32."""
    return prototype_scores(z, prototypes, normalize=True)


def nearest_prototype(z: Tensor, prototypes: Tensor) -> Tensor:
    """(N,) index of each embedding's most similar prototype."""
    return cosine_scores(z, prototypes).argmax(dim=1)


def occupancy(z: Tensor, prototypes: Tensor) -> Tensor:
    """(K,) number of embeddings whose most similar prototype is k (empty clusters: 0)."""
    return torch.bincount(nearest_prototype(z, prototypes), minlength=prototypes.shape[0])


def nearest_images(z: Tensor, prototypes: Tensor) -> Tensor:
    """(K,) for each prototype, the index of its most similar embedding."""
    return cosine_scores(z, prototypes).argmax(dim=0)


@torch.no_grad()
def normalize_(weight: Tensor) -> Tensor:
    """Rescale the rows of a prototype matrix to unit length in place (SwAV, Sec. 4)."""
    return weight.copy_(F.normalize(weight, dim=1))
