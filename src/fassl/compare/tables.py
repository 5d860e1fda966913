"""Paper-style comparison tables (markdown and CSV) and a bar chart of group accuracies."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING

from fassl.data import GROUPS
from fassl.files import atomic_path
from fassl.report.plotting import pyplot
from fassl.report.results import COLUMNS, EMPTY

if TYPE_CHECKING:
    from matplotlib.figure import Figure


# a cell without a number: a column the paper does not give, a group without classes
ABSENT = "—"


def _paper_row(all_: float, rare: float, medium: float, frequent: float, std: float) -> dict:
    """A row of the paper's Tables 1-2, which list All, Rare, Medium, Frequent, Std."""
    return {"all": all_, "frequent": frequent, "medium": medium, "rare": rare, "std": std}


def _all_only(all_: float) -> dict:
    """A row that the paper gives as All only (LDAM-DRW+SSP)."""
    return _paper_row(all_, math.nan, math.nan, math.nan, math.nan)


# The paper's linear-probe numbers (Tables 1 and 2 of the FASSL paper), for side-by-side
# rows: dataset -> probe setting -> arm -> row. BYOL is the paper's BYOL from scratch;
# BCL-I is BCL on SimCLR with the common SSL augmentations only (the arm bcl_i_common).
PAPER = {
    "cifar10": {
        "standard": {
            "simclr": _paper_row(75.37, 69.33, 73.33, 83.45, 5.94),
            "byol": _paper_row(75.66, 75.43, 69.83, 81.70, 4.85),
            "swav": _paper_row(76.60, 73.30, 71.10, 85.40, 6.29),
            "ldam_drw_ssp": _all_only(77.83),
            "sdclr": _paper_row(80.49, 75.10, 78.07, 88.30, 5.66),
            "fassl": _paper_row(80.69, 78.80, 76.73, 86.55, 4.23),
            "supervised": _paper_row(80.76, 75.43, 80.93, 85.93, 4.95),
        },
        "few_shot": {
            "byol": _paper_row(62.33, 50.40, 60.53, 76.05, 10.55),
            "simclr": _paper_row(62.98, 56.67, 62.97, 69.30, 5.16),
            "swav": _paper_row(65.16, 52.90, 61.97, 80.60, 11.53),
            "sdclr": _paper_row(67.23, 56.63, 61.87, 83.20, 11.49),
            "fassl": _paper_row(68.54, 62.43, 61.93, 81.25, 8.99),
            "supervised": _paper_row(69.82, 65.07, 66.47, 77.93, 5.76),
        },
    },
    "cifar100": {
        "standard": {
            "ldam_drw_ssp": _all_only(43.43),
            "swav": _paper_row(47.00, 44.00, 47.03, 49.97, 2.44),
            "byol": _paper_row(48.86, 45.55, 47.42, 53.62, 3.45),
            "simclr": _paper_row(49.76, 47.58, 50.36, 51.35, 1.60),
            "bcl_i_common": _paper_row(52.22, 48.27, 53.03, 55.35, 2.95),
            "sdclr": _paper_row(54.94, 51.00, 55.03, 58.79, 3.18),
            "fassl": _paper_row(55.27, 53.55, 54.52, 57.74, 1.79),
            "supervised": _paper_row(54.06, 51.39, 54.18, 56.62, 2.13),
        },
        "few_shot": {
            "swav": _paper_row(20.14, 13.91, 20.06, 26.44, 5.12),
            "byol": _paper_row(20.62, 14.03, 19.61, 28.24, 5.84),
            "simclr": _paper_row(22.51, 15.45, 22.48, 29.59, 5.77),
            "sdclr": _paper_row(25.39, 19.91, 25.52, 30.74, 4.42),
            "fassl": _paper_row(27.11, 21.18, 27.88, 32.26, 4.56),
            "supervised": _paper_row(28.97, 13.88, 32.03, 41.00, 11.28),
        },
    },
}
PAPER_CIFAR10_LT = PAPER["cifar10"]
# the paper's names of its rows, where they are not the arm's own
PAPER_LABELS = {"bcl_i_common": "BCL-I", "ldam_drw_ssp": "LDAM-DRW+SSP"}


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and population std over seeds (0 for one seed)."""
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def _finite(value: object) -> bool:
    """A number that is there: results.json writes a missing accuracy as null (or a run
    leaves out a group without classes)."""
    return isinstance(value, int | float) and math.isfinite(value)


def _column(values: list) -> tuple[float, float, int]:
    """(mean, spread, n) over the seeds that have the column; (nan, nan, 0) when none has
    it (an empty group), which the tables show as ``ABSENT``."""
    present = [float(v) for v in values if _finite(v)]
    return (*mean_spread(present), len(present)) if present else (math.nan, math.nan, 0)


def cell(mean: float, spread: float) -> str:
    """``mean ± spread``, or ``ABSENT`` for a column no run has (an empty group)."""
    return ABSENT if math.isnan(mean) else f"{mean:.2f} ± {spread:.2f}"


def summarize(runs: list[dict]) -> dict[str, dict[str, dict[str, tuple[float, float, int]]]]:
    """runs: {"method", "seed", "results"} -> setting -> method -> column -> (mean, spread, n).

    A column is averaged over the seeds that have it; one that no seed has (a group
    without classes) is (nan, nan, 0)."""
    out: dict[str, dict[str, dict[str, tuple[float, float, int]]]] = {}
    settings = [s for s in ("standard", "few_shot") if any(s in r["results"] for r in runs)]
    for setting in settings:
        methods: dict[str, dict[str, tuple[float, float, int]]] = {}
        for name in dict.fromkeys(r["method"] for r in runs):
            rows = [
                r["results"][setting]
                for r in runs
                if r["method"] == name and setting in r["results"]
            ]
            if rows:
                methods[name] = {c: _column([row.get(c) for row in rows]) for c in COLUMNS}
        out[setting] = methods
    return out


def _paper_cells(ref: dict) -> str:
    return " | ".join(ABSENT if math.isnan(ref[c]) else f"{ref[c]:.2f}" for c in COLUMNS)


def markdown_tables(summary: dict, paper: dict | None = None) -> str:
    """One table per probe setting: mean ± spread over seeds per arm; with ``paper``
    (a dataset of ``PAPER``), the paper's row under each arm it has, and its other rows
    (arms not run here) at the end of the table."""
    parts = []
    for setting, methods in summary.items():
        lines = [
            f"### {setting.replace('_', '-')} probe",
            "",
            "| method | seeds | All | Frequent | Medium | Rare | Std |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, cols in methods.items():
            n = max(col[2] for col in cols.values())
            cells = " | ".join(cell(*cols[c][:2]) for c in COLUMNS)
            lines.append(f"| {name} | {n} | {cells} |")
            ref = (paper or {}).get(setting, {}).get(name)
            if ref:
                label = PAPER_LABELS.get(name, name)
                lines.append(f"| *{label} (paper)* | | {_paper_cells(ref)} |")
        for name, ref in (paper or {}).get(setting, {}).items():
            if name not in methods:
                label = PAPER_LABELS.get(name, name)
                lines.append(f"| *{label} (paper, not run here)* | | {_paper_cells(ref)} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def difference_tables(runs: list[dict], pairs: list[tuple[str, str]]) -> str:
    """Each arm minus its base (``pairs``: (arm, base)), paired by seed: the mean of the
    per-seed differences ± their population spread, per probe and column; only seeds
    both arms finished count. Empty when no pair has a common seed."""
    by = {(r["method"], r["seed"]): r["results"] for r in runs}
    parts = []
    for setting in ("standard", "few_shot"):
        lines = []
        for arm, base in pairs:
            seeds = sorted(
                s
                for (m, s) in by
                if m == arm and (base, s) in by
                if setting in by[(arm, s)] and setting in by[(base, s)]
            )
            if not seeds:
                continue
            cells = [_difference(by, arm, base, setting, c, seeds) for c in COLUMNS]
            lines.append(f"| {arm} − {base} | {len(seeds)} | " + " | ".join(cells) + " |")
        if lines:
            head = [
                f"### {setting.replace('_', '-')} probe: each mechanism against its base",
                "",
                "Per-seed differences (arm minus base on the same seed), mean ± population "
                "spread over seeds; for Std, lower is more even.",
                "",
                "| arm − base | seeds | All | Frequent | Medium | Rare | Std |",
                "|---|---|---|---|---|---|---|",
            ]
            parts.append("\n".join(head + lines))
    return "\n\n".join(parts) + "\n" if parts else ""


def _difference(by: dict, arm: str, base: str, setting: str, column: str, seeds: list[int]) -> str:
    """The cell of ``difference_tables``: over the seeds where both arms have the column."""
    diffs = []
    for s in seeds:
        a, b = by[(arm, s)][setting].get(column), by[(base, s)][setting].get(column)
        if _finite(a) and _finite(b):
            diffs.append(a - b)
    if not diffs:
        return ABSENT
    m, spread = mean_spread(diffs)
    return f"{m:+.2f} ± {spread:.2f}"


def paper_dataset(num_classes: int, dataset: str) -> str | None:
    """The key of ``PAPER`` for a comparison's data: CIFAR-10-LT or CIFAR-100-LT by class
    count (a folder of CIFAR images counts too), None for anything else."""
    if dataset == "digits":
        return None
    return {10: "cifar10", 100: "cifar100"}.get(num_classes)


def paper_elsewhere(summary: dict, dataset: str | None) -> str:
    """A note on the arms of ``summary`` that the paper reports on another dataset only
    (BCL-I: CIFAR-100-LT), with those rows; empty when there are none."""
    lines = []
    for other, tables in PAPER.items():
        if other == dataset:
            continue
        for setting, rows in tables.items():
            for name, ref in rows.items():
                here = PAPER.get(dataset or "", {}).get(setting, {})
                if name in summary.get(setting, {}) and name not in here:
                    label = PAPER_LABELS.get(name, name)
                    lines.append(f"| {label} | {other} | {setting} | {_paper_cells(ref)} |")
    if not lines:
        return ""
    head = [
        "### The paper's rows on another dataset",
        "",
        "| arm | dataset | probe | All | Frequent | Medium | Rare | Std |",
        "|---|---|---|---|---|---|---|---|",
    ]
    return "\n".join(head + lines) + "\n"


def write_csv(summary: dict, path: Path) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            ["setting", "method", "seeds"]
            + [f"{c}_{k}" for c in COLUMNS for k in ("mean", "spread")]
        )
        for setting, methods in summary.items():
            for name, cols in methods.items():
                n = max(col[2] for col in cols.values())
                values = [v for c in COLUMNS for v in cols[c][:2]]
                w.writerow(
                    [setting, name, n] + ["" if math.isnan(v) else f"{v:.4f}" for v in values]
                )


def bar_figure(summary: dict) -> Figure:
    """Grouped bars: All / Frequent / Medium / Rare accuracy per method, one panel a
    setting; one legend for all panels, below the axes so that it covers no bar."""
    plt = pyplot()
    groups = ("all", *GROUPS)  # the COLUMNS order, Std aside (it is not an accuracy)
    fig, axes = plt.subplots(1, len(summary), figsize=(6 * len(summary), 4.6), squeeze=False)
    names: list[str] = []
    for ax, (setting, methods) in zip(axes[0], summary.items(), strict=True):
        names = list(dict.fromkeys([*names, *methods]))
        width = 0.8 / max(1, len(methods))
        for i, name in enumerate(methods):
            xs = [j + i * width for j in range(len(groups))]
            ax.bar(
                xs,
                [methods[name][g][0] for g in groups],
                width,
                yerr=[methods[name][g][1] for g in groups],
                label=name,
                capsize=2,
                color=f"C{names.index(name)}",
            )
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
        ax.set_xticklabels([g.capitalize() for g in groups])
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{setting.replace('_', '-')} linear probe")
    handles = [plt.Rectangle((0, 0), 1, 1, color=f"C{i}") for i in range(len(names))]
    rows = (len(names) + 5) // 6
    fig.legend(handles, names, loc="lower center", ncol=min(6, len(names)), fontsize=8)
    fig.tight_layout(rect=(0, 0.06 * rows + 0.02, 1, 1))
    return fig


def bar_chart(summary: dict, path: Path) -> None:
    """``bar_figure`` saved as a PNG."""
    plt = pyplot()
    fig = bar_figure(summary)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def _over_seeds(values: list[float | None]) -> str:
    """Mean ± spread of a group's value over seeds; "–" for a group without classes."""
    present = [v for v in values if v is not None]
    if not present:
        return EMPTY
    m, s = mean_spread(present)
    return f"{m:.3f} ± {s:.3f}"


def weight_analysis_tables(found: dict[tuple[str, str], list[dict]]) -> str:
    """Markdown from weight analyses keyed by (stage, arm) (stage: ``prototypes`` after
    stage 1, ``rebalance`` after stage 2), one payload per seed: per
    weight variant, the top-5% share of Medium and Rare images and their enrichment
    (share / base share), and the prototypes' nearest-image groups, mean ± spread over
    seeds. Stage 1 is shared by the FASSL arms of a seed, so it is shown for one arm
    (``fassl`` when present); stage 2 has one table per arm. Empty when none exist."""
    stage1 = [arm for stage, arm in found if stage == "prototypes"]
    keep = ["fassl"] if "fassl" in stage1 else stage1[:1]
    sections = [(("prototypes", arm), "after stage 1") for arm in keep] + [
        (("rebalance", arm), f"after stage 2, {arm}")
        for stage, arm in found
        if stage == "rebalance"
    ]
    parts = []
    for key, title in sections:
        payloads = found[key]
        weights = payloads[0]["weights"]
        base = next(iter(weights.values()))["base_share"]
        lines = [
            f"### Weight enrichment {title} ({len(payloads)} seeds)",
            "",
            f"Base share Medium / Rare: {base['medium']:.3f} / {base['rare']:.3f}",
            "",
            "| weight | top-5% share Medium | top-5% share Rare | Medium enrichment |"
            " Rare enrichment |",
            "|---|---|---|---|---|",
        ]
        for w in weights:
            cells = [
                _over_seeds([p["weights"][w][kind].get(g) for p in payloads])
                for kind, g in (
                    ("top_share", "medium"),
                    ("top_share", "rare"),
                    ("enrichment", "medium"),
                    ("enrichment", "rare"),
                )
            ]
            lines.append(f"| {w} | " + " | ".join(cells) + " |")
        shares = [
            _over_seeds([p["prototype_nearest_image_groups"].get(g) for p in payloads])
            for g in GROUPS
        ]
        shown = " / ".join(shares)
        lines += ["", f"Prototypes whose nearest image is Frequent / Medium / Rare: {shown}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n" if parts else ""
