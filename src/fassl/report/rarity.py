"""The files of a rarity ranking: rarity.csv, rarity.json, the contact sheet, the
histograms and, with labels, the class groups among the rarest images."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from fassl.analysis.rarity import Ranking, group_enrichment, ranks
from fassl.data import GROUPS
from fassl.data.collection import Collection
from fassl.errors import printable
from fassl.files import OutputSet
from fassl.report.figures import contact_sheet, density_histograms
from fassl.report.results import write_json


def _captions(coll: Collection, ranking: Ranking) -> list[str]:
    rank = ranks(ranking.scores[ranking.primary])
    return [f"#{int(rank[i])} {coll.label_name(i)}".strip() for i in range(len(coll))]


def _labelled(coll: Collection) -> bool:
    return coll.labels is not None and bool(coll.groups)


def write_rarity(
    out: Path, coll: Collection, ranking: Ranking, meta: dict, sheet: int, seed: int
) -> list[str]:
    """rarity.csv, the contact sheet, the histograms, rarity.json and, with labels and
    class groups, rarity_groups.md into ``out``, all renamed into place together once
    all are written (a failure leaves the previous set); returns the names written."""
    labels = [coll.label_name(i) for i in range(len(coll))] if coll.labels is not None else []
    n = min(sheet, len(coll))
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randperm(len(coll), generator=generator)[:n]
    payload = meta | {
        "weights": list(ranking.scores),
        "images": len(coll),
        "weight_k": ranking.k,
        "notes": [*coll.notes, *ranking.notes],
    }
    if ranking.occupancy is not None:
        payload["prototype_occupancy"] = ranking.occupancy.tolist()
    with OutputSet(out) as files:
        write_rarity_csv(files.path("rarity.csv"), ranking, coll.paths, labels)
        contact_sheet(
            coll.images,
            ranking.order()[:n],
            sample,
            _captions(coll, ranking),
            files.path("rarity_contact_sheet.png"),
            ranking.primary,
        )
        density = files.path("rarity_density.png")
        density_histograms(ranking.density, ranking.k, ranking.occupancy, density)
        if _labelled(coll):
            assert coll.labels is not None
            enrichment = group_enrichment(ranking, coll.labels, coll.groups)
            payload["group_enrichment"] = enrichment
            md = groups_markdown(enrichment, int((coll.labels >= 0).sum()))
            files.write_text("rarity_groups.md", md)
        write_json(payload, files.path("rarity.json"))
    return files.names


def groups_markdown(enrichment: dict, n: int) -> str:
    """rarity_groups.md: per weight and top fraction, each group's share against its base."""
    lines = [
        "# Class groups among the rarest images",
        "",
        f"Labels used for evaluation only ({n:,} labelled images). Enrichment = share among "
        "the top-scored images / share among all images; above 1, the ranking favours the "
        "group.",
        "",
        "| weight | top | base share F / M / R | top share F / M / R | enrichment F / M / R |",
        "|---|---|---|---|---|",
    ]
    for weight, tops in enrichment.items():
        for top, d in tops.items():
            cells = [
                " / ".join(f"{d[kind][g]:.3f}" for g in GROUPS)
                for kind in ("base_share", "top_share", "enrichment")
            ]
            lines.append(f"| {weight} | {top} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_rarity_csv(path: Path, ranking: Ranking, paths: list[str], labels: list[str]) -> None:
    """rarity.csv, rarest first: rank, path, [label], score, local density,
    [nearest prototype, its cosine], then score and rank under each further weight."""
    extra = list(ranking.scores)[1:]
    extra_ranks = {w: ranks(ranking.scores[w]) for w in extra}
    header = ["rank", "path", *(["label"] if labels else []), "score", "local_density"]
    if ranking.nearest is not None:
        header += ["nearest_prototype", "prototype_cosine"]
    header += [f"{kind}_{w}" for w in extra for kind in ("score", "rank")]
    primary = ranking.scores[ranking.primary]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for pos, i in enumerate(ranking.order().tolist(), start=1):
            row = [pos, printable(paths[i]), *([printable(labels[i])] if labels else [])]
            row += [f"{primary[i]:.6g}", f"{ranking.density[i]:.6g}"]
            if ranking.nearest is not None and ranking.cosine is not None:
                row += [int(ranking.nearest[i]), f"{ranking.cosine[i]:.6g}"]
            for name in extra:
                row += [f"{ranking.scores[name][i]:.6g}", int(extra_ranks[name][i])]
            w.writerow(row)
