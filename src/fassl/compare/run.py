"""Several methods over several seeds on the same data, probe and compute budget.

Writes ``comparison.md``, ``comparison.csv`` and ``comparison.png`` into ``out_dir``;
each run lives in ``out_dir/<method>/seed<k>/`` and is reused when it is already done, so
a comparison killed at any point resumes with the same command. The folder may be shared
by concurrent comparisons of other arms or seeds (the paper-width script runs them side by
side): every run folder in it is locked on its own while it trains.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fassl import report
from fassl.compare import tables
from fassl.compare.arms import (
    arm_order,
    arm_record,
    arm_structure,
    baseline_epochs,
    bases_of,
    is_pipeline,
    run_arm,
    run_config,
    stage1_lead,
)
from fassl.compare.sweep import run_sweep
from fassl.config import Config, load_config, to_yaml
from fassl.data import build_data
from fassl.distributed import on_all, on_main
from fassl.errors import ConfigError, DamagedFile
from fassl.files import write_text
from fassl.names import CONFIG, EXPORT, PIPELINE_STAGES, RESULTS
from fassl.registry import ARMS
from fassl.runs.settings import pipeline_stages
from fassl.runs.stage import check_same_config, check_same_data
from fassl.runtime import Runtime
from fassl.validation import check_paths


def run_comparison(cfg: Config, rt: Runtime) -> dict:
    """Every arm of ``compare.methods`` at every seed, then the tables; with a
    ``compare.grid``, one comparison per grid point (``fassl.compare.sweep``).

    Under torchrun every rank trains every run; rank 0 alone decides which runs are done
    and writes config.yaml and the tables (``fassl.distributed.on_main``). ``rt`` is the
    caller's (``runtime_for(cfg.train)``: it joined the process group)."""
    if cfg.compare.grid:
        return run_sweep(cfg, rt)
    out = Path(cfg.out_dir)
    check_paths(cfg)
    check_same_config(cfg)  # under torchrun: the ranks were given the same settings
    # a bad data folder fails before anything is written, on every rank together
    data = on_all(lambda: build_data(cfg.data, cfg.seed))
    check_same_data(data, cfg.data.root)

    def start() -> None:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / CONFIG, to_yaml(cfg))

    on_main(start)
    # every arm after the runs it starts from (fassl's stages, an SSP encoder)
    order = arm_order(cfg)
    runs = []
    for seed in cfg.compare.seeds:
        for name in order:
            results = run_arm(run_config(cfg, name, seed, out), name, data, rt)
            runs.append({"method": name, "seed": seed, "results": results})
    note = (
        f"seeds: {list(cfg.compare.seeds)}; baselines trained for {baseline_epochs(cfg)} "
        "epochs (FASSL at equal compute: teacher + prototypes + student)"
    )
    notes = [*data.notes, note, *(arm_structure(name, cfg) for name in order)]
    paper = tables.paper_dataset(data.num_classes, cfg.data.dataset)
    return on_main(lambda: write_comparison(out, runs, data.name, notes, paper))


def _differences(runs: list[dict]) -> str:
    """Each label-free mechanism against its own bases, where both arms ran."""
    arms = {r["method"] for r in runs}
    pairs = [(a, b) for a in sorted(arms) for b in bases_of(a) if b in arms]
    text = tables.difference_tables(runs, pairs)
    return f"\n{text}" if text else ""


def teacher_runs(runs: list[dict]) -> list[dict]:
    """A row ``<arm>_teacher`` for the SDCLR teacher of every FASSL arm that trained its
    own (equal compute: ``fassl``); the paper's structure starts from the sdclr arm,
    which is a row already, and the other FASSL arms share their lead's teacher."""
    rows = []
    for r in runs:
        name, teacher = r["method"], r["results"].get("teacher")
        if name not in ARMS:  # a run a script added beside the arms (bcl_d_continued)
            continue
        own = is_pipeline(name) and name == stage1_lead(name) and not arm_record(name).start_arm
        if teacher and own:
            rows.append({"method": f"{name}_teacher", "seed": r["seed"], "results": teacher})
    return rows


def _seed_of(folder: Path) -> int | None:
    """k of a run folder ``seed<k>``; None for any other name."""
    digits = folder.name.removeprefix("seed")
    return int(digits) if folder.name.startswith("seed") and digits.isdigit() else None


def _damage(path: Path) -> str:
    """What is wrong with the run file at ``path``; "" when it reads as a JSON object."""
    try:
        report.read_json_object(path)
    except DamagedFile as err:
        return str(err)
    return ""


def collect_runs(out: Path) -> list[dict]:
    """Every finished run under ``out/<method>/seed<k>/results.json``; a damaged
    results.json is an unfinished run (``unfinished_runs`` names it), not a traceback."""
    runs = []
    for path in sorted(Path(out).glob("*/seed*/results.json")):
        seed = _seed_of(path.parent)
        if seed is None or not path.is_file():
            continue
        try:
            results = report.read_json_object(path)
        except DamagedFile:
            continue
        runs.append({"method": path.parent.parent.name, "seed": seed, "results": results})
    return runs


@dataclass(frozen=True)
class Unfinished:
    """A run of a comparison without a readable results.json: ``<arm>/seed<k>``, the
    files of a finished run it lacks (``started``: whether its folder exists) and what is
    wrong with a results.json that is there but damaged."""

    run: str
    missing: list[str]
    started: bool
    damaged: str = ""

    def describe(self) -> str:
        """``fassl/seed0 (missing rebalance/encoder.safetensors, results.json)``."""
        if self.damaged:
            return f"{self.run} ({self.damaged})"
        what = "not started" if not self.started else "missing " + ", ".join(self.missing)
        return f"{self.run} ({what})"


def _load(path: Path) -> Config | None:
    """The config at ``path``; None when there is none or it no longer loads (a note
    about unfinished runs must not fail on an old config)."""
    try:
        return load_config(path) if path.is_file() else None
    except ConfigError:
        return None


def _stages(out: Path, arm: str, seed: int) -> list[str]:
    """The stages a pipeline arm's run trains: by its own config.yaml, else by the
    comparison's (a shared stage 1 or a given teacher skips stages), else all three."""
    own = _load(out / arm / f"seed{seed}" / CONFIG)
    if own is not None:
        return pipeline_stages(own)
    comparison = _load(out / CONFIG)
    if comparison is not None:
        return pipeline_stages(run_config(comparison, arm, seed, out))
    return list(PIPELINE_STAGES)


def expected_files(out: Path, arm: str, seed: int) -> list[str]:
    """The files of a finished run of ``arm`` at ``seed``, relative to its folder: each
    trained stage's export for a pipeline arm (``rebalance/encoder.safetensors``), else
    the run's ``encoder.safetensors``; results.json last."""
    if is_pipeline(arm):
        exports = [f"{stage}/{EXPORT}" for stage in _stages(out, arm, seed)]
    else:
        exports = [EXPORT]
    return [*exports, RESULTS]


def _planned(out: Path) -> list[tuple[str, int]]:
    """(arm, seed) of every run the comparison's config.yaml asks for; none without it."""
    cfg = _load(out / CONFIG)
    if cfg is None or cfg.compare.grid:
        return []
    return [(arm, seed) for seed in cfg.compare.seeds for arm in arm_order(cfg)]


def unfinished_runs(out: Path) -> list[Unfinished]:
    """Every run folder ``out/<arm>/seed<k>/`` without a readable results.json, and every
    run the comparison's config.yaml plans that has no folder yet, with the files each
    lacks (or what is wrong with its results.json)."""
    out = Path(out)
    found = [(f.parent.name, _seed_of(f)) for f in sorted(out.glob("*/seed*")) if f.is_dir()]
    # the planned runs in the comparison's order, then any other folder
    runs = dict.fromkeys(_planned(out) + [(a, s) for a, s in found if s is not None])
    unfinished = []
    for arm, seed in runs:
        folder = out / arm / f"seed{seed}"
        damaged = _damage(folder / RESULTS) if (folder / RESULTS).is_file() else ""
        if (folder / RESULTS).is_file() and not damaged:
            continue
        files = expected_files(out, arm, seed)
        missing = [f for f in files if not (folder / f).is_file()]
        unfinished.append(Unfinished(f"{arm}/seed{seed}", missing, folder.is_dir(), damaged))
    return unfinished


def _count(n: int, what: str) -> str:
    """``1 finished run``, ``2 finished runs``."""
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def tables_notes(out: Path, runs: list[dict], unfinished: list[Unfinished]) -> list[str]:
    """The notes of ``fassl tables``: how many runs it found, then one line naming the
    unfinished runs it left out and what each lacks."""
    notes = [f"{_count(len(runs), 'finished run')} found in {out}"]
    if unfinished:
        left_out = "; ".join(u.describe() for u in unfinished)
        notes.append(f"left out, {_count(len(unfinished), 'unfinished run')}: {left_out}")
    return notes


# analysis files of run folders written before the stages had one vocabulary
_LEGACY_ANALYSIS = {"stage1": "prototypes", "stage2": "rebalance"}


def collect_analyses(out: Path) -> dict[tuple[str, str], list[dict]]:
    """Every ``out/<arm>/seed<k>/analysis_<stage>.json``, keyed by (stage, arm)."""
    found: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(Path(out).glob("*/seed*/analysis_*.json")):
        stage = path.stem.removeprefix("analysis_")
        stage = _LEGACY_ANALYSIS.get(stage, stage)
        analysis = report.read_results(path, "left out of the tables")
        if analysis is not None:
            found.setdefault((stage, path.parent.parent.name), []).append(analysis)
    return found


def write_comparison(
    out: Path, runs: list[dict], name: str, notes: list[str], paper: str | None = None
) -> dict:
    """comparison.md / .csv / .png / .json from a list of finished runs, and weights.md
    from the FASSL arms' weight analyses when there are any."""
    runs = [*runs, *teacher_runs(runs)]
    summary = tables.summarize(runs)
    meta = next((r["results"].get("meta", {}) for r in runs if "meta" in r["results"]), {})
    lines = [*notes, *report.group_lines(meta)]
    header = f"# Comparison on {name}\n\n" + "\n".join(f"- {n}" for n in lines) + "\n\n"
    write_text(
        out / "comparison.md",
        header
        + tables.markdown_tables(summary, tables.PAPER.get(paper or ""))
        + _differences(runs)
        + (("\n" + tables.paper_elsewhere(summary, paper)) if paper else ""),
    )
    tables.write_csv(summary, out / "comparison.csv")
    tables.bar_chart(summary, out / "comparison.png")
    write_text(out / "comparison.json", json.dumps({"runs": runs}, indent=2))
    weights = tables.weight_analysis_tables(collect_analyses(out))
    if weights:
        write_text(out / "weights.md", f"# Weight analyses in {out}\n\n{weights}")
    print((out / "comparison.md").read_text())
    return summary


def paper_dataset_of(out: Path) -> str:
    """The paper's dataset for ``fassl tables --paper`` without a value: the comparison's
    own (from its config.yaml: CIFAR-100 when it is), else CIFAR-10."""
    config = out / CONFIG
    if config.is_file():
        cfg = load_config(config)
        if cfg.data.dataset == "cifar100" or "cifar100" in Path(cfg.data.root).name:
            return "cifar100"
    return "cifar10"
