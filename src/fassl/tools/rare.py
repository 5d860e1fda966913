"""``fassl rare``: rank every image of a collection by rarity and write the files.

The scores are ``fassl.analysis.rarity``'s, the files ``fassl.report.rarity``'s; this
module only ties a checkpoint and a collection to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fassl.analysis.rarity import rank_collection
from fassl.config import Config
from fassl.data.collection import Collection
from fassl.encoders import load_encoder
from fassl.neighbours import APPROXIMATE_ABOVE
from fassl.report.rarity import write_rarity
from fassl.runtime import Runtime


@dataclass
class RareOptions:
    """Which weights rank (empty: rebalance.weight of the config), how many images the
    contact sheet shows on each side, and above how many images the neighbour search is
    approximate (faiss-cpu when installed, else exact; None: always exact)."""

    weights: list[str] = field(default_factory=list)
    sheet: int = 32
    batch_size: int = 512
    progress: bool = True
    seed: int = 0  # draws the random sample of the contact sheet
    approximate_above: int | None = APPROXIMATE_ABOVE


def run_rare(
    checkpoint: Path, coll: Collection, cfg: Config, rt: Runtime, opts: RareOptions, out: Path
) -> list[str]:
    """``fassl rare``: rank every image of ``coll``, write the files into ``out``."""
    loaded = load_encoder(checkpoint)
    ranking, _ = rank_collection(
        loaded,
        coll,
        cfg,
        rt,
        opts.weights,
        opts.batch_size,
        opts.progress,
        opts.approximate_above,
    )
    meta = {
        "checkpoint": str(checkpoint),
        "method": loaded.meta.get("method"),
        "feature": cfg.prototypes.feature,
        "neighbour_search": "approximate (faiss)" if ranking.approximate else "exact",
    }
    return write_rarity(out, coll, ranking, meta, opts.sheet, opts.seed)
