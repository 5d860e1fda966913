"""Several methods over several seeds on the same data, probe and compute budget.

Writes ``comparison.md``, ``comparison.csv`` and ``comparison.png`` into ``out_dir``;
each run lives in ``out_dir/<method>/seed<k>/`` and is reused when it is already done, so
a comparison killed at any point resumes with the same command. The folder may be shared
by concurrent comparisons of other arms or seeds (the paper-width script runs them side by
side): every run folder in it is locked on its own while it trains.
"""

from __future__ import annotations

import json
from pathlib import Path

from fassl import report
from fassl.arms import arm_order, base_of, baseline_epochs, is_pipeline, run_config
from fassl.config import Config, to_yaml
from fassl.data.build import build_data
from fassl.files import write_text
from fassl.pipeline import run_pipeline, run_pretrain
from fassl.runtime import runtime_for
from fassl.sweep import run_sweep
from fassl.validation import check_paths


def run_comparison(cfg: Config) -> dict:
    """Every arm of ``compare.methods`` at every seed, then the tables; with a
    ``compare.grid``, one comparison per grid point (``fassl.sweep``)."""
    if cfg.compare.grid:
        return run_sweep(cfg)
    out = Path(cfg.out_dir)
    check_paths(cfg)
    rt = runtime_for(cfg.train)
    data = build_data(cfg.data, cfg.seed)  # a bad data folder fails before anything is written
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", to_yaml(cfg))
    # every arm after the runs it starts from (fassl's stages, an SSP encoder)
    order = arm_order(cfg)
    runs = []
    for seed in cfg.compare.seeds:
        for name in order:
            c = run_config(cfg, name, seed, out)
            done = Path(c.out_dir) / "results.json"
            if done.is_file():
                results = json.loads(done.read_text())
            elif is_pipeline(name):
                results = run_pipeline(c, data=data, rt=rt)
            else:
                results = run_pretrain(c, data=data, rt=rt)
            runs.append({"method": name, "seed": seed, "results": results})
    note = (
        f"seeds: {list(cfg.compare.seeds)}; baselines trained for {baseline_epochs(cfg)} "
        "epochs (FASSL: teacher + prototypes + student)"
    )
    return write_comparison(
        out,
        runs,
        data.name,
        [*data.notes, note],
        paper=report.paper_dataset(data.num_classes, cfg.data.dataset),
    )


def _differences(runs: list[dict]) -> str:
    """Each label-free mechanism against its own base, where both arms ran."""
    arms = {r["method"] for r in runs}
    pairs = {a: b for a in sorted(arms) if (b := base_of(a)) is not None and b in arms}
    text = report.difference_tables(runs, pairs)
    return f"\n{text}" if text else ""


def collect_runs(out: Path) -> list[dict]:
    """Every finished run under ``out/<method>/seed<k>/results.json``."""
    runs = []
    for path in sorted(Path(out).glob("*/seed*/results.json")):
        seed = int(path.parent.name.removeprefix("seed"))
        runs.append(
            {
                "method": path.parent.parent.name,
                "seed": seed,
                "results": json.loads(path.read_text()),
            }
        )
    return runs


# analysis files of run folders written before the stages had one vocabulary
_LEGACY_ANALYSIS = {"stage1": "prototypes", "stage2": "rebalance"}


def collect_analyses(out: Path) -> dict[tuple[str, str], list[dict]]:
    """Every ``out/<arm>/seed<k>/analysis_<stage>.json``, keyed by (stage, arm)."""
    found: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(Path(out).glob("*/seed*/analysis_*.json")):
        stage = path.stem.removeprefix("analysis_")
        stage = _LEGACY_ANALYSIS.get(stage, stage)
        found.setdefault((stage, path.parent.parent.name), []).append(json.loads(path.read_text()))
    return found


def write_comparison(
    out: Path, runs: list[dict], name: str, notes: list[str], paper: str | None = None
) -> dict:
    """comparison.md / .csv / .png / .json from a list of finished runs, and weights.md
    from the FASSL arms' weight analyses when there are any."""
    summary = report.summarize(runs)
    meta = next((r["results"].get("meta", {}) for r in runs if "meta" in r["results"]), {})
    lines = [*notes, *report.group_lines(meta)]
    header = f"# Comparison on {name}\n\n" + "\n".join(f"- {n}" for n in lines) + "\n\n"
    write_text(
        out / "comparison.md",
        header
        + report.markdown_tables(summary, report.PAPER.get(paper or ""))
        + _differences(runs)
        + (("\n" + report.paper_elsewhere(summary, paper)) if paper else ""),
    )
    report.write_csv(summary, out / "comparison.csv")
    report.bar_chart(summary, out / "comparison.png")
    write_text(out / "comparison.json", json.dumps({"runs": runs}, indent=2))
    weights = report.weight_analysis_tables(collect_analyses(out))
    if weights:
        write_text(out / "weights.md", f"# Weight analyses in {out}\n\n{weights}")
    print((out / "comparison.md").read_text())
    return summary
