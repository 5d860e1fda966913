"""Sweep tables in the layout of the paper's Tables 3-5, and accuracy against the value.

Rows are grid points (the swept value), columns All / Frequent / Medium / Rare / Std
per probe setting as mean ± spread over seeds; a second table gives the prototypes'
nearest-image groups after stage 1 (Tables 4-5: which groups K prototypes describe at
each K or rho).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fassl.compare.tables import cell, mean_spread
from fassl.data import GROUPS
from fassl.files import atomic_path
from fassl.report.plotting import pyplot
from fassl.report.results import COLUMNS, EMPTY

# setting -> method -> column -> (mean, spread, seeds), as tables.summarize returns it
Summary = dict[str, dict[str, dict[str, tuple[float, float, int]]]]
SETTINGS = ("standard", "few_shot")


@dataclass
class Sweep:
    """Finished runs of a sweep, summarised per grid point (lists in grid order)."""

    keys: list[str]
    values: list[dict[str, Any]]  # per point: key -> value
    summaries: list[Summary]  # per point: summary of its finished runs
    prototypes: list[dict[str, tuple[float, float, int]]]  # per point: group -> share; {}
    shared: list[str]  # methods no grid key reaches: the same runs in every row

    def cell(self, i: int) -> str:
        """What point ``i``'s rows show in the swept-value column."""
        if len(self.keys) == 1:
            return show(self.values[i][self.keys[0]])
        return ", ".join(f"{k}={show(self.values[i][k])}" for k in self.keys)

    @property
    def header(self) -> str:
        return self.keys[0] if len(self.keys) == 1 else "grid point"

    def settings(self) -> list[str]:
        return [s for s in SETTINGS if any(s in summary for summary in self.summaries)]

    def methods(self, setting: str) -> list[str]:
        found = (m for summary in self.summaries for m in summary.get(setting, {}))
        return list(dict.fromkeys(found))


def show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def prototype_shares(analyses: list[dict]) -> dict[str, tuple[float, float, int]]:
    """Mean ± spread over seeds of the share of prototypes whose nearest image is in each
    group (``analysis_prototypes.json``); {} without analyses."""
    if not analyses:
        return {}
    found = [a["prototype_nearest_image_groups"] for a in analyses]
    return {  # a group without classes has no share
        g: (*mean_spread([f[g] for f in found]), len(found))
        for g in GROUPS
        if all(g in f for f in found)
    }


def _accuracy_table(sweep: Sweep, setting: str) -> list[str]:
    lines = [
        f"### {setting.replace('_', '-')} probe",
        "",
        f"| {sweep.header} | method | seeds | All | Frequent | Medium | Rare | Std |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in sweep.methods(setting):
        shown = f"{name} (shared)" if name in sweep.shared else name
        for i, summary in enumerate(sweep.summaries):
            cols = summary.get(setting, {}).get(name)
            if cols is None:
                continue
            cells = " | ".join(cell(*cols[c][:2]) for c in COLUMNS)
            lines.append(f"| {sweep.cell(i)} | {shown} | {cols['all'][2]} | {cells} |")
    return lines


def _prototype_table(sweep: Sweep) -> list[str]:
    lines = [
        "### Prototypes by the group of their nearest image, after stage 1 (%)",
        "",
        f"| {sweep.header} | seeds | Frequent | Medium | Rare |",
        "|---|---|---|---|---|",
    ]
    for i, shares in enumerate(sweep.prototypes):
        if shares:
            cells = " | ".join(
                f"{100 * shares[g][0]:.2f} ± {100 * shares[g][1]:.2f}" if g in shares else EMPTY
                for g in GROUPS
            )
            seeds = next(iter(shares.values()))[2]
            lines.append(f"| {sweep.cell(i)} | {seeds} | {cells} |")
    return lines


def sweep_markdown(sweep: Sweep) -> str:
    """One accuracy table per probe setting, then the prototypes' groups when known."""
    parts = ["\n".join(_accuracy_table(sweep, s)) for s in sweep.settings()]
    if any(sweep.prototypes):
        parts.append("\n".join(_prototype_table(sweep)))
    if sweep.shared:
        parts.append(
            f"(shared): {', '.join(sweep.shared)} trained once per seed, since no grid key "
            "changes it; the same runs appear in every row."
        )
    return "\n\n".join(parts) + "\n"


def write_sweep_csv(sweep: Sweep, path: Path, prototypes_path: Path) -> None:
    """Accuracies (one row per setting, point and method) and the prototypes' groups (one
    row per point), one column per swept key."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        stats = [f"{c}_{k}" for c in COLUMNS for k in ("mean", "spread")]
        w.writerow(["setting", *sweep.keys, "method", "shared", "seeds", *stats])
        for setting in sweep.settings():
            for name in sweep.methods(setting):
                for values, summary in zip(sweep.values, sweep.summaries, strict=True):
                    cols = summary.get(setting, {}).get(name)
                    if cols is None:
                        continue
                    # an empty group (no class) is a blank cell, as in the comparison CSV
                    row = [
                        "" if math.isnan(v) else f"{v:.4f}" for c in COLUMNS for v in cols[c][:2]
                    ]
                    keys = [show(values[k]) for k in sweep.keys]
                    shared = name in sweep.shared
                    w.writerow([setting, *keys, name, shared, cols["all"][2], *row])
    with atomic_path(prototypes_path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        stats = [f"{g}_{k}" for g in GROUPS for k in ("mean", "spread")]
        w.writerow([*sweep.keys, "seeds", *stats])
        for values, shares in zip(sweep.values, sweep.prototypes, strict=True):
            if shares:
                blank = ("", "")  # a group without classes, as in the accuracy rows
                row = [
                    f"{v:.4f}" if g in shares else ""
                    for g in GROUPS
                    for v in shares.get(g, blank)[:2]
                ]
                seeds = next(iter(shares.values()))[2]
                w.writerow([*(show(values[k]) for k in sweep.keys), seeds, *row])


def sweep_plot(sweep: Sweep, path: Path) -> None:
    """Accuracy (All and each group, mean ± spread) against the grid points, evenly spaced
    in grid order; one panel per probe setting, one line style per method."""
    plt = pyplot()
    settings = sweep.settings()
    fig, _ = plt.subplots(1, max(1, len(settings)), figsize=(6 * len(settings), 4))
    styles = ("-", "--", ":", "-.")
    xs = list(range(len(sweep.values)))
    for ax, setting in zip(fig.axes, settings, strict=False):
        for j, name in enumerate(sweep.methods(setting)):
            for k, col in enumerate(("all", *GROUPS)):
                cols = [s.get(setting, {}).get(name, {}).get(col) for s in sweep.summaries]
                ys = [c[0] if c else math.nan for c in cols]
                errs = [c[1] if c else 0.0 for c in cols]
                ax.errorbar(
                    xs,
                    ys,
                    yerr=errs,
                    color=f"C{k}",
                    linestyle=styles[j % len(styles)],
                    marker="o",
                    capsize=2,
                    label=f"{name} {col.capitalize()}",
                )
        ax.set_xticks(xs)
        ax.set_xticklabels([sweep.cell(i) for i in xs], rotation=30 if len(sweep.keys) > 1 else 0)
        ax.set_xlabel(sweep.header)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{setting.replace('_', '-')} linear probe")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
