"""Every image's rarity by the re-balancing weight phi, rarest first (``fassl rare`` and
the label-free analysis of an unlabeled pipeline run).

The score of an image is its log phi (``fassl.rebalance``, larger = rarer) among all the
images of the collection, with the weight the run was trained with (rebalance.weight) or
others. The prototype variants need the checkpoint's prototypes; ``knn`` (inverse local
density) needs only features. Labels, where the collection has them, only measure how
much each class group is enriched among the rarest images; the scores never see them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from fassl.config import Config, RebalanceConfig
from fassl.data.collection import Collection
from fassl.encoders import LoadedEncoder
from fassl.errors import RarityError
from fassl.features import embed_images
from fassl.neighbours import APPROXIMATE_ABOVE
from fassl.prototypes import cosine_scores, occupancy
from fassl.rebalance.enrichment import weight_enrichment
from fassl.rebalance.reweighters import REWEIGHTERS, KnnWeight, Reweighter, build_reweighter
from fassl.runtime import Runtime

TOP_FRACTIONS = (0.01, 0.05)
FEATURE_FREE = ("knn",)  # the weights that need no prototypes
BLOCK_ELEMENTS = 1 << 26  # similarities held at once when scoring (256 MB of float32)


@dataclass
class Ranking:
    """Scores of every image under each weight (first = the ranking's), and the label-free
    context: local density and, with prototypes, the nearest prototype of each image."""

    scores: dict[str, torch.Tensor]  # weight -> (N,) log phi
    density: torch.Tensor  # (N,) mean cosine to the k nearest other images
    k: int
    nearest: torch.Tensor | None = None  # (N,) nearest prototype
    cosine: torch.Tensor | None = None  # (N,) cosine to it
    occupancy: torch.Tensor | None = None  # (K,) images per prototype
    notes: list[str] = field(default_factory=list)
    approximate: bool = False  # the neighbours came from the approximate search

    @property
    def primary(self) -> str:
        return next(iter(self.scores))

    def order(self, weight: str = "") -> torch.Tensor:
        return rank_order(self.scores[weight or self.primary])


def rank_order(scores: torch.Tensor) -> torch.Tensor:
    """Image indices from rarest (largest score) to most common; ties keep index order."""
    return torch.sort(scores.float(), descending=True, stable=True).indices


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """(N,) rank of each image, 1 = rarest."""
    rank = torch.empty(len(scores), dtype=torch.long)
    rank[rank_order(scores)] = torch.arange(1, len(scores) + 1)
    return rank


def check_weights(weights: list[str], prototypes: torch.Tensor | None, source: str) -> None:
    """Refuse weights that cannot rank: unknown, phi = 1, or needing absent prototypes."""
    for name in weights:
        if name not in REWEIGHTERS:
            raise RarityError(f"unknown weight {name!r}: expected one of {list(REWEIGHTERS)}")
        if name == "none":
            raise RarityError("weight 'none' gives every image phi = 1: there is nothing to rank")
        if prototypes is None and name not in FEATURE_FREE:
            raise RarityError(
                f"{source} holds no prototypes (it is not a FASSL stage-1 or stage-2 "
                f"export), so weight {name!r} cannot be computed; this checkpoint supports "
                f"--weights {','.join(FEATURE_FREE)} only"
            )


def neighbour_count(cfg: RebalanceConfig, n: int) -> tuple[int, list[str]]:
    """rebalance.weight_k, capped so that every image has that many other images."""
    if n < 2:
        raise RarityError(f"ranking needs at least 2 images, got {n}")
    k = min(cfg.weight_k, n - 1)
    note = f"k = {k} neighbours (rebalance.weight_k={cfg.weight_k}, {n} images)"
    return k, [] if k == cfg.weight_k else [note]


def dataset_log_phi(reweighter: Reweighter, features: torch.Tensor) -> torch.Tensor:
    """``reweighter.dataset_log_phi()`` computed a block of rows at a time.

    The kNN weight compares every image with every other: its own neighbour search
    (``fassl.neighbours``) holds a bounded block of that N x N matrix at a time.
    """
    if type(reweighter).dataset_log_phi is not Reweighter.dataset_log_phi:
        return reweighter.dataset_log_phi()  # a variant with its own rule (knn): as is
    rows = max(1, BLOCK_ELEMENTS // max(1, len(features)))
    return torch.cat([reweighter.log_phi(b) for b in features.split(rows)])


def local_density(features: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) mean cosine of each image to its k nearest other images (itself excluded)."""
    return -neighbour_weight(features, k).dataset_log_phi()


def neighbour_weight(
    features: torch.Tensor, k: int, approximate_above: int | None = None
) -> KnnWeight:
    """The knn weight fitted on ``features``: its one neighbour search (on the features'
    device) gives both the knn scores and the local density."""
    knn = KnnWeight(k, approximate_above)
    knn.fit(features.new_zeros(0, features.shape[1]), features)
    return knn


def weight_scores(
    name: str, cfg: RebalanceConfig, features: torch.Tensor, prototypes: torch.Tensor | None
) -> torch.Tensor:
    """(N,) log phi of every image under weight ``name``, fitted on these images."""
    reweighter = build_reweighter(name, cfg)
    protos = prototypes if prototypes is not None else features.new_zeros(0, features.shape[1])
    reweighter.fit(protos.float(), features.float())
    return dataset_log_phi(reweighter, features.float()).float().cpu()


def rank_images(
    features: torch.Tensor,
    prototypes: torch.Tensor | None,
    weights: list[str],
    cfg: RebalanceConfig,
    source: str = "the checkpoint",
    approximate_above: int | None = None,
    device: torch.device | None = None,
) -> Ranking:
    """Score every image under each of ``weights``; the first one orders the ranking.

    The neighbours of every image are searched once (on ``device``, default the CPU;
    approximately above ``approximate_above`` images when faiss is installed) and give
    both the knn weight and the local density; the ranking's notes say which search ran.
    """
    check_weights(weights, prototypes, source)
    features = features.float().cpu()
    if prototypes is not None and prototypes.shape[1] != features.shape[1]:
        raise RarityError(
            f"{source}: prototypes have {prototypes.shape[1]} dimensions, the features "
            f"{features.shape[1]}: set prototypes.feature to the feature they were learnt on"
        )
    k, notes = neighbour_count(cfg, len(features))
    cfg = dataclasses.replace(cfg, weight_k=k)
    knn = neighbour_weight(features.to(device or features.device), k, approximate_above)
    found = knn.dataset_neighbours()
    scores = {
        w: knn.dataset_log_phi().cpu()
        if w == "knn"
        else weight_scores(w, cfg, features, prototypes)
        for w in weights
    }
    density = found.similarities.float().mean(dim=1).cpu()
    ranking = Ranking(scores, density, k, notes=[*notes, found.note], approximate=found.approximate)
    if prototypes is not None:
        cos = cosine_scores(features, prototypes.float().cpu())
        ranking.cosine, ranking.nearest = cos.max(dim=1)
        ranking.occupancy = occupancy(features, prototypes.float().cpu())
    return ranking


def group_enrichment(
    ranking: Ranking, labels: torch.Tensor, groups: dict[str, list[int]]
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """weight -> "top1%" / "top5%" -> weight_enrichment's shares, for labelled images."""
    known = labels >= 0
    out = {}
    for weight, score in ranking.scores.items():
        out[weight] = {
            f"top{fraction:.0%}": weight_enrichment(score[known], labels[known], groups, fraction)
            for fraction in TOP_FRACTIONS
        }
    return out


def rank_collection(
    loaded: LoadedEncoder,
    coll: Collection,
    cfg: Config,
    rt: Runtime,
    weights: list[str],
    batch_size: int = 512,
    progress: bool = True,
    approximate_above: int | None = APPROXIMATE_ABOVE,
) -> tuple[Ranking, torch.Tensor]:
    """(ranking, features): every image of ``coll`` scored by ``weights`` (empty: the
    config's rebalance.weight) on the feature the prototypes live on, normalised as the
    encoder's training images were. The images are read a chunk at a time (a streamed
    collection is never decoded whole); only the (N, D) features are held."""
    coll = coll.normalised_as(loaded.training_stats, loaded.source)
    net = loaded.feature_net(cfg.prototypes.feature)
    feats = embed_images(net, coll.images, coll.mean, coll.std, rt, batch_size, progress)
    chosen = weights or [cfg.rebalance.weight]
    ranking = rank_images(
        feats,
        loaded.prototypes,
        chosen,
        cfg.rebalance,
        loaded.source,
        approximate_above,
        rt.device,
    )
    return ranking, feats
