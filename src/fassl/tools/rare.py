"""Running a rarity ranking end to end: features, scores, and the files people read.

Shared by ``fassl rare`` (any checkpoint, any collection) and the pipeline, which writes
the same label-free files for an unlabeled run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from fassl.analysis.prototypes import save_retrieval_grid
from fassl.config import Config
from fassl.data.bundle import LongTailData
from fassl.encoders import LoadedEncoder, load_encoder
from fassl.report import write_json
from fassl.runtime import Runtime
from fassl.tools.collection import Collection, collection_from_data
from fassl.tools.common import embed_collection, feature_net, with_training_normalisation
from fassl.tools.figures import contact_sheet, density_histograms
from fassl.tools.rarity import (
    Ranking,
    group_enrichment,
    groups_markdown,
    rank_images,
    ranks,
    write_rarity_csv,
)


@dataclass
class RareOptions:
    """Which weights rank (empty: rebalance.weight of the config) and how many images the
    contact sheet shows on each side."""

    weights: list[str] = field(default_factory=list)
    sheet: int = 32
    batch_size: int = 512
    progress: bool = True
    seed: int = 0  # draws the random sample of the contact sheet


def _captions(coll: Collection, ranking: Ranking) -> list[str]:
    rank = ranks(ranking.scores[ranking.primary])
    return [f"#{int(rank[i])} {coll.label_name(i)}".strip() for i in range(len(coll))]


def _labelled(coll: Collection) -> bool:
    return coll.labels is not None and bool(coll.groups)


def write_rarity(
    out: Path, coll: Collection, ranking: Ranking, meta: dict, opts: RareOptions
) -> list[str]:
    """rarity.csv, the contact sheet, the histograms, rarity.json and, with labels and
    class groups, rarity_groups.md into ``out``; returns the names written."""
    out.mkdir(parents=True, exist_ok=True)
    labels = [coll.label_name(i) for i in range(len(coll))] if coll.labels is not None else []
    write_rarity_csv(out / "rarity.csv", ranking, coll.paths, labels)
    n = min(opts.sheet, len(coll))
    generator = torch.Generator().manual_seed(opts.seed)
    sample = torch.randperm(len(coll), generator=generator)[:n]
    contact_sheet(
        coll.images,
        ranking.order()[:n],
        sample,
        _captions(coll, ranking),
        out / "rarity_contact_sheet.png",
        ranking.primary,
    )
    density_histograms(ranking.density, ranking.k, ranking.occupancy, out / "rarity_density.png")
    written = ["rarity.csv", "rarity_contact_sheet.png", "rarity_density.png"]
    payload = meta | {
        "weights": list(ranking.scores),
        "images": len(coll),
        "knn_k": ranking.k,
        "notes": [*coll.notes, *ranking.notes],
    }
    if ranking.occupancy is not None:
        payload["prototype_occupancy"] = ranking.occupancy.tolist()
    if _labelled(coll):
        assert coll.labels is not None
        enrichment = group_enrichment(ranking, coll.labels, coll.groups)
        payload["group_enrichment"] = enrichment
        md = groups_markdown(enrichment, int((coll.labels >= 0).sum()))
        (out / "rarity_groups.md").write_text(md, encoding="utf-8")
        written.append("rarity_groups.md")
    write_json(payload, out / "rarity.json")
    return [*written, "rarity.json"]


def rank_checkpoint(
    checkpoint: Path, coll: Collection, cfg: Config, rt: Runtime, opts: RareOptions
) -> tuple[Ranking, torch.Tensor, LoadedEncoder]:
    """(ranking, features, encoder): every image of ``coll`` scored by the weights of
    ``opts`` (default: the config's) on the feature the prototypes live on."""
    loaded = load_encoder(checkpoint)
    coll = with_training_normalisation(coll, loaded)
    weights = opts.weights or [cfg.rebalance.weight]
    net = feature_net(loaded, cfg.prototypes.feature)
    feats = embed_collection(net, coll, rt, opts.batch_size, opts.progress)
    ranking = rank_images(feats, loaded.prototypes, weights, cfg.rebalance, str(checkpoint))
    return ranking, feats, loaded


def run_rare(
    checkpoint: Path, coll: Collection, cfg: Config, rt: Runtime, opts: RareOptions, out: Path
) -> list[str]:
    """``fassl rare``: rank every image of ``coll``, write the files into ``out``."""
    ranking, _, loaded = rank_checkpoint(checkpoint, coll, cfg, rt, opts)
    meta = {
        "checkpoint": str(checkpoint),
        "method": loaded.meta.get("method"),
        "feature": cfg.prototypes.feature,
    }
    return write_rarity(out, coll, ranking, meta, opts)


def label_free_analysis(
    export: Path, cfg: Config, data: LongTailData, rt: Runtime, out_dir: Path, stage: str
) -> list[str]:
    """What an unlabeled pipeline run can say about its images after ``stage``: the
    rarity ranking (``rarity_<stage>/``), prototype occupancy and the retrieval grid.

    With rebalance.weight=none (phi = 1) the ranking uses ``knn`` instead.
    """
    coll = collection_from_data(data, cfg.data)
    weight = cfg.rebalance.weight if cfg.rebalance.weight != "none" else "knn"
    opts = RareOptions(weights=[weight], progress=cfg.train.progress, seed=cfg.seed)
    ranking, feats, loaded = rank_checkpoint(export, coll, cfg, rt, opts)
    meta = {"checkpoint": str(export), "stage": stage, "feature": cfg.prototypes.feature}
    folder = f"rarity_{stage}"
    written = [
        f"{folder}/{name}" for name in write_rarity(out_dir / folder, coll, ranking, meta, opts)
    ]
    if loaded.prototypes is not None:
        grid = f"retrieval_{stage}.png"
        title = f"Prototypes after stage {stage} (no labels)"
        save_retrieval_grid(coll.images, feats, loaded.prototypes, str(out_dir / grid), title)
        written.append(grid)
    return written
