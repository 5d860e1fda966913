"""Every variant of phi as one class: Eq. 3 and its label-free variants.

Every variant is one class with one contract: ``fit`` at an epoch start on the frozen
prototypes (and, where ``needs_dataset``, the teacher's features of every training
image), then ``log_phi(z)``: one log-weight per row, larger = rarer, no gradient.
``normalize_weights`` (``fassl.rebalance.phi``) turns log phi into batch weights.

``REWEIGHTERS`` (name -> class, from ``fassl.registry.WEIGHT_CLASSES``) is what the
stage-2 method, the FASSL arms of ``fassl compare`` and the weight analyses read. Adding a
variant is one class here, its test and one line in the registry.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from fassl.config import RebalanceConfig
from fassl.float32 import float32_only
from fassl.neighbours import Neighbours, find_neighbours, knn_similarities
from fassl.prototypes import cosine_scores, nearest_prototype, occupancy
from fassl.rebalance.phi import log_rebalance_weight
from fassl.registry import WEIGHT_CLASSES, load

# --------------------------------------------------------------- pure log-weight maths


@float32_only
@torch.no_grad()
def log_weight_softmax_density(z: Tensor, prototypes: Tensor, temperature: float) -> Tensor:
    """Inverse soft density of prototypes around z: -logsumexp_k(cos(z, p_k) / t).

    A label-free alternative to Eq. 3 of the FASSL paper: an image close to many
    prototypes (a crowded, frequent region) gets a small weight; one far from all
    gets a large weight. Small ``t`` approaches -max_k cos / t.

    Args:
        z: (N, D) embeddings.
        prototypes: (K, D) prototype matrix.
        temperature: softmax temperature t.

    Returns:
        (N,) float32 log-weights, detached.
    """
    cos = cosine_scores(z, prototypes)
    return -torch.logsumexp(cos / temperature, dim=1)


@float32_only
@torch.no_grad()
def log_weight_cluster_size(z: Tensor, prototypes: Tensor, cluster_sizes: Tensor) -> Tensor:
    """Inverse size of the nearest prototype's cluster: -log(count of its images).

    A label-free alternative to Eq. 3 of the FASSL paper. The nearest prototype is the
    one of largest cosine similarity; ``cluster_sizes[k]`` counts the dataset images
    assigned to prototype k, clamped to at least 1 so that empty clusters stay finite.

    Args:
        z: (N, D) embeddings.
        prototypes: (K, D) prototype matrix.
        cluster_sizes: (K,) image counts per prototype.

    Returns:
        (N,) float32 log-weights, detached.
    """
    if cluster_sizes.shape != (prototypes.shape[0],):
        raise ValueError(
            f"cluster_sizes must have shape ({prototypes.shape[0]},), "
            f"got {tuple(cluster_sizes.shape)}"
        )
    nearest = nearest_prototype(z, prototypes)
    sizes = cluster_sizes.to(device=nearest.device, dtype=torch.float32).clamp_min(1.0)
    return -torch.log(sizes[nearest])


@float32_only
@torch.no_grad()
def log_weight_knn(z: Tensor, bank: Tensor, k: int) -> Tensor:
    """Inverse local density in a feature bank: -(mean cosine to the k nearest rows).

    A label-free alternative to Eq. 3 of the FASSL paper: images in sparse regions of
    the feature space (likely rare classes) get larger weights. The bank is used as
    given: a query that is itself in the bank counts itself as a neighbour at cosine 1
    (``KnnWeight.dataset_log_phi`` discounts that).

    Args:
        z: (N, D) query embeddings.
        bank: (M, D) feature bank, M >= k.
        k: number of neighbours.

    Returns:
        (N,) float32 log-weights, detached.
    """
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k must be in [1, {bank.shape[0]}] (the bank size), got {k}")
    return log_weight_of_neighbours(knn_similarities(z, bank, k))


def log_weight_of_neighbours(similarities: Tensor) -> Tensor:
    """-(mean cosine to the neighbours found): ``log_weight_knn`` from a search's
    (N, k) similarities, so that one search serves the weight and the local density."""
    return -similarities.float().mean(dim=1)


# ------------------------------------------------------------------------ the variants


class Reweighter:
    """Base: fit on the prototypes (and dataset features), then log phi per image."""

    name: ClassVar[str] = ""
    needs_dataset: ClassVar[bool] = False  # fit needs every training image's features
    # rebalance.strength of this variant's comparison arm; None = the configured one.
    arm_strength: ClassVar[float | None] = None

    def __init__(self) -> None:
        self.prototypes = torch.zeros(0, 0)
        self.features: Tensor | None = None

    @classmethod
    def from_config(cls, cfg: RebalanceConfig) -> Reweighter:
        return cls()

    def fit(self, prototypes: Tensor, features: Tensor | None = None) -> None:
        """Take the frozen prototypes and, for dataset-level variants, the features."""
        if self.needs_dataset and features is None:
            raise ValueError(f"weight {self.name!r} needs the features of the dataset")
        self.prototypes = prototypes
        self.features = features

    def log_phi(self, z: Tensor) -> Tensor:
        """(N,) float32 log-weights of the rows of ``z``: larger = rarer, detached."""
        raise NotImplementedError

    def dataset_log_phi(self) -> Tensor:
        """log phi of the fitted dataset features themselves (for the analyses)."""
        if self.features is None:
            raise ValueError("dataset_log_phi needs fit(prototypes, features)")
        return self.log_phi(self.features)


class PaperWeight(Reweighter):
    """Eq. 3 as written: log phi_i = -sum_k <z_i, p_k> on raw (unnormalised) vectors."""

    name = "paper"
    arm_strength = 0.0  # its arm compares Eq. 3 exactly as written, spread included

    def log_phi(self, z: Tensor) -> Tensor:
        return log_rebalance_weight(z, self.prototypes, normalize=False)


class PaperNormalizedWeight(Reweighter):
    """Eq. 3 on unit-length z and p: the exponent lies in [-K, K]."""

    name = "paper_normalized"

    def log_phi(self, z: Tensor) -> Tensor:
        return log_rebalance_weight(z, self.prototypes, normalize=True)


class SoftmaxDensityWeight(Reweighter):
    """Inverse soft density of prototypes around z (``log_weight_softmax_density``)."""

    name = "softmax_density"

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    @classmethod
    def from_config(cls, cfg: RebalanceConfig) -> Reweighter:
        return cls(cfg.density_temperature)

    def log_phi(self, z: Tensor) -> Tensor:
        return log_weight_softmax_density(z, self.prototypes, self.temperature)


class ClusterSizeWeight(Reweighter):
    """Inverse size of the nearest prototype's cluster over the dataset."""

    name = "cluster_size"
    needs_dataset = True

    def fit(self, prototypes: Tensor, features: Tensor | None = None) -> None:
        super().fit(prototypes, features)
        assert features is not None
        self.sizes = occupancy(features, prototypes).float()

    def log_phi(self, z: Tensor) -> Tensor:
        return log_weight_cluster_size(z, self.prototypes, self.sizes)


class KnnWeight(Reweighter):
    """Inverse local density among the dataset's features (``log_weight_knn``).

    A batch's log phi searches the bank exactly (blocked: bounded memory whatever its
    size). The dataset's own neighbours (each image without itself) are searched once
    per fit and kept: ``dataset_log_phi`` and the local density of ``fassl rare`` share
    them; above ``approximate_above`` bank rows that search may be approximate
    (``fassl.neighbours``; None: always exact, as in training).
    """

    name = "knn"
    needs_dataset = True

    def __init__(self, k: int = 10, approximate_above: int | None = None) -> None:
        super().__init__()
        self.k = k
        self.approximate_above = approximate_above
        self._neighbours: Neighbours | None = None

    @classmethod
    def from_config(cls, cfg: RebalanceConfig) -> Reweighter:
        return cls(cfg.weight_k)

    def fit(self, prototypes: Tensor, features: Tensor | None = None) -> None:
        super().fit(prototypes, features)
        assert features is not None
        self.bank = F.normalize(features, dim=1)
        self._neighbours = None  # a new bank: its neighbours are searched on demand

    def log_phi(self, z: Tensor) -> Tensor:
        return log_weight_knn(z, self.bank, self.k)

    def dataset_neighbours(self) -> Neighbours:
        """The k nearest other images of every fitted image (one search per fit)."""
        if self.features is None:
            raise ValueError("dataset_neighbours needs fit(prototypes, features)")
        if self._neighbours is None:
            self._neighbours = find_neighbours(
                self.bank,
                self.bank,
                self.k,
                exclude_self=True,
                approximate_above=self.approximate_above,
            )
        return self._neighbours

    def dataset_log_phi(self) -> Tensor:
        # Every image is in the bank: its neighbours are the k nearest other images.
        return log_weight_of_neighbours(self.dataset_neighbours().similarities)


class NoWeight(Reweighter):
    """phi = 1: stage 2 is BYOL from the teacher (the paper's ablation)."""

    name = "none"

    def log_phi(self, z: Tensor) -> Tensor:
        return torch.zeros(z.shape[0], device=z.device)


# name -> class, as ``fassl.registry.WEIGHT_CLASSES`` declares them (each class above)
REWEIGHTERS: dict[str, type[Reweighter]] = {
    name: load(target) for name, target in WEIGHT_CLASSES.items()
}


def build_reweighter(name: str, cfg: RebalanceConfig) -> Reweighter:
    """The registered variant ``name`` with its settings from ``rebalance.*``."""
    return REWEIGHTERS[name].from_config(cfg)
