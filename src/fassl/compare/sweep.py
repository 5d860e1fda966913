"""``fassl compare`` over a grid of config values (the paper's Tables 3-5).

``compare.grid`` maps dotted config keys to lists of values. Every combination (a grid
point) is a comparison of ``compare.methods`` over ``compare.seeds`` in
``out_dir/grid/<key=value[,key=value]>/<method>/seed<k>/``, each config built by the
normal loader from ``out_dir/config.yaml`` plus the point's ``key=value`` overrides (so
an unknown key or a mistyped value fails before anything trains).

What a grid key cannot change is trained once per seed and shared by the points:

- FASSL's SDCLR teacher when no key reaches what the teacher reads (``TEACHER_READS``):
  a K (``prototypes.*``) or tau (``rebalance.*``) sweep trains one teacher per seed, in
  ``out_dir/shared/fassl/<group>/seed<k>/teacher/``, given to every point as
  ``pipeline.teacher_checkpoint``;
- also FASSL's stage 1 when no key reaches ``PROTOTYPES_READS`` (a tau sweep), given as
  ``pipeline.prototypes_checkpoint``;
- a baseline whose settings no key reaches, in ``out_dir/shared/<method>/<group>/``.

``<group>`` names the values of the keys that do reach the shared part (``all`` when
none does), so a two-key grid shares within each value of the other key. A
``data.*`` sweep reaches everything: nothing is shared. ``grid/grid.json`` records the
points and where each method's runs live; ``fassl tables`` rebuilds the sweep tables
(``sweep.md`` / ``.csv`` / ``.png``) from whatever runs have finished.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fassl import report
from fassl.compare import sweep_tables as sweep_report
from fassl.compare import tables
from fassl.compare.arms import (
    arm_method,
    arm_order,
    arm_record,
    is_pipeline,
    run_arm,
    run_config,
    set_dotted,
    starts_from,
)
from fassl.config import Config, load_config, to_yaml
from fassl.data import LongTailData, build_data
from fassl.distributed import on_all
from fassl.errors import ConfigError
from fassl.files import write_text
from fassl.names import CONFIG, EXPORT
from fassl.runs.settings import RUN, method_sections, pipeline_stages
from fassl.runs.stage import (
    STAGE_METHODS,
    check_batch_sizes,
    check_same_data,
    run_pipeline_stage,
)
from fassl.runtime import Runtime

GRID_FILE = "grid/grid.json"
# Config sections (dotted prefixes) each shareable part reads; a grid key under none of
# them leaves that part unchanged. Whole sections: sharing errs on the side of retraining.
# A stage's own sections come from its method class (``Method.sections``), so a key the
# stage reads (e.g. ``temperature``) is never missed here.
TEACHER_READS = (
    "seed",
    "data",
    "augment",
    "model",
    "train",
    *method_sections(STAGE_METHODS["teacher"]),
    "pipeline.teacher",
    "pipeline.teacher_checkpoint",
)
PROTOTYPES_READS = (
    *TEACHER_READS,
    *method_sections(STAGE_METHODS["prototypes"]),
    "pipeline.prototypes",
    "pipeline.prototypes_checkpoint",
)
# A baseline's epochs follow the pipeline's (compare.baseline_epochs=0), hence "pipeline".
BASELINE_READS = ("seed", "data", "augment", "model", "train", "optim", "probe", "pipeline")
# The config sections a baseline arm reads besides BASELINE_READS: its method's own
# (fassl.runs.settings.method_sections) and, for a variant, the keys the variant sets.
# Keys a grid may not sweep: the comparison's own settings, and the runtime (one process
# runs every point).
NOT_SWEPT = ("compare", "seed", "out_dir", "method", "train")


@dataclass
class GridPoint:
    """One combination of the grid's values and where its runs and shared parts live."""

    values: dict[str, Any]
    cfg: Config  # the point's config; out_dir is out/grid/<label>
    teacher_group: str | None  # out/shared/fassl/<group>/ when the teacher is shared
    prototypes_group: str | None  # ... when stage 1 is shared too
    run_dirs: dict[str, str]  # method -> folder (relative to out) holding seed<k>/

    @property
    def label(self) -> str:
        return point_label(self.values)


def format_value(value: Any) -> str:
    """A value as a folder name and a table cell: ``64``, ``0.99``, ``true``."""
    text = json.dumps(value) if not isinstance(value, str) else value
    return text.replace("/", "_").replace("\\", "_").replace(" ", "")


def point_label(values: dict[str, Any]) -> str:
    return ",".join(f"{k}={format_value(v)}" for k, v in values.items())


def reaches(key: str, reads: tuple[str, ...]) -> bool:
    """Whether the dotted ``key`` lies in (or contains) one of the sections ``reads``."""
    return any(key == r or key.startswith(r + ".") or r.startswith(key + ".") for r in reads)


def share_group(values: dict[str, Any], reads: tuple[str, ...]) -> str | None:
    """The shared folder's name for a part reading ``reads``: the values of the keys that
    reach it (``all`` when none does); None when every key reaches it (nothing to share)."""
    reaching = {k: v for k, v in values.items() if reaches(k, reads)}
    if len(reaching) == len(values):
        return None
    return point_label(reaching) or "all"


def check_grid(grid: dict[str, list[Any]]) -> None:
    for key, values in grid.items():
        if any(reaches(key, (k,)) for k in NOT_SWEPT):
            raise ConfigError(
                f"config key 'compare.grid': {key!r} cannot be swept (not: {list(NOT_SWEPT)}); "
                "seeds are compare.seeds, methods compare.methods"
            )
        if not values:
            raise ConfigError(f"config key 'compare.grid.{key}': give at least one value")


def point_config(base: Path, values: dict[str, Any], out: Path) -> Config:
    """The config of one grid point: ``base`` (a config.yaml) with ``key=value`` overrides,
    through the normal loader; errors name the grid key."""
    overrides = [f"{k}={json.dumps(v)}" for k, v in values.items()]
    try:
        cfg = load_config(base, overrides)
    except ConfigError as err:
        raise ConfigError(f"config key 'compare.grid' at {point_label(values)}: {err}") from err
    cfg.compare.grid = {}
    cfg.out_dir = str(out / "grid" / point_label(values))
    return cfg


def run_dirs(cfg: Config, values: dict[str, Any], label: str) -> dict[str, str]:
    """Where each method's ``seed<k>/`` folders live, relative to the sweep's out_dir."""
    dirs = {}
    for name in arm_order(cfg):
        reads = (*BASELINE_READS, *arm_sections(name))
        group = None if is_pipeline(name) else share_group(values, reads)
        dirs[name] = f"shared/{name}/{group}" if group else f"grid/{label}/{name}"
    return dirs


def arm_sections(name: str) -> tuple[str, ...]:
    """The config sections a baseline arm's training reads: its method's, the keys the
    arm sets, and the section of a key that names the arm it starts from (ldam_drw_ssp's
    ``ldam.ssp_method``)."""
    a = arm_record(name)
    keys = tuple(key for key, _ in a.keys)
    start = (a.start_arm_key.partition(".")[0],) if a.start_arm_key else ()
    return (*method_sections(arm_method(name)), *keys, *start)


def plan(cfg: Config, out: Path) -> list[GridPoint]:
    """Every grid point, validated, with its shared parts (nothing is trained here)."""
    check_grid(cfg.compare.grid)
    keys = list(cfg.compare.grid)
    points = []
    given = cfg.pipeline
    for combo in itertools.product(*(cfg.compare.grid[k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        label = point_label(values)
        c = point_config(out / CONFIG, values, out)
        teacher = None if given.teacher_checkpoint else share_group(values, TEACHER_READS)
        protos = None if given.prototypes_checkpoint else share_group(values, PROTOTYPES_READS)
        points.append(GridPoint(values, c, teacher, protos, run_dirs(cfg, values, label)))
    return points


def write_plan(points: list[GridPoint], out: Path) -> None:
    payload = {
        "keys": list(points[0].values),
        "points": [{"label": p.label, "values": p.values, "runs": p.run_dirs} for p in points],
    }
    (out / GRID_FILE).parent.mkdir(parents=True, exist_ok=True)
    write_text(out / GRID_FILE, json.dumps(payload, indent=2))


@dataclass
class SweepContext:
    """What every run of a sweep needs besides its point and seed."""

    out: Path
    data: LongTailData
    rt: Runtime


def shared_stage(point: GridPoint, stage: str, seed: int, ctx: SweepContext) -> Path:
    """The export of the shared ``stage`` (teacher / prototypes) at ``seed``, trained the
    first time it is asked for (``run_pipeline_stage`` skips a finished one)."""
    group = point.teacher_group if stage == "teacher" else point.prototypes_group
    assert group is not None
    c = copy.deepcopy(point.cfg)
    c.seed = seed
    c.out_dir = str(ctx.out / "shared" / "fassl" / group / f"seed{seed}")
    init = None
    if stage == "prototypes":
        given = c.pipeline.teacher_checkpoint
        init = Path(given) if given else shared_stage(point, "teacher", seed, ctx)
    return run_pipeline_stage(c, ctx.data, ctx.rt, stage, init)


def run_point_arm(point: GridPoint, name: str, seed: int, ctx: SweepContext) -> dict:
    """One method at one seed of one grid point (reused when its results exist)."""
    cfg = copy.deepcopy(point.cfg)
    # a FASSL arm that trains its own teacher (the paper's structure starts from an arm)
    own_teacher = is_pipeline(name) and not starts_from(name, cfg)
    if own_teacher and point.prototypes_group:
        cfg.pipeline.prototypes_checkpoint = str(shared_stage(point, "prototypes", seed, ctx))
    elif own_teacher and point.teacher_group:
        cfg.pipeline.teacher_checkpoint = str(shared_stage(point, "teacher", seed, ctx))
    c = run_config(cfg, name, seed, Path(point.cfg.out_dir))
    c.out_dir = str(ctx.out / point.run_dirs[name] / f"seed{seed}")
    if start := starts_from(name, cfg):  # the run it starts from may live in a shared folder
        arm, key = start
        set_dotted(c, key, str(ctx.out / point.run_dirs[arm] / f"seed{seed}" / EXPORT))
    return run_arm(c, name, ctx.data, ctx.rt)


def load_point_data(points: list[GridPoint], methods: list[str], seed: int) -> dict:
    """Every point's data (one load per distinct ``data`` section), with every batch size
    checked against it, before anything trains: a rho sweep whose last point is too small
    for the batch fails at once, not after the points before it trained."""
    datasets: dict[str, LongTailData] = {}
    for point in points:
        key = to_yaml(point.cfg.data)
        if key not in datasets:
            # on every rank together, and the same images on each (fassl.runs.stage)
            datasets[key] = on_all(lambda c=point.cfg.data: build_data(c, seed))
            check_same_data(datasets[key], point.cfg.data.root)
        stages = pipeline_stages(point.cfg) if any(is_pipeline(m) for m in methods) else []
        if not all(is_pipeline(m) for m in methods):
            stages.append(RUN)
        try:
            check_batch_sizes(point.cfg, datasets[key], stages)
        except ConfigError as err:
            raise ConfigError(f"compare.grid at {point.label}: {err}") from err
    return datasets


def run_sweep(cfg: Config, rt: Runtime) -> dict:
    """Every grid point's comparison, then the sweep tables and plot (``rt``: the
    caller's)."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / CONFIG, to_yaml(cfg))
    points = plan(cfg, out)
    write_plan(points, out)
    datasets = load_point_data(points, cfg.compare.methods, cfg.seed)
    order = arm_order(cfg)  # every arm after the runs it starts from
    for point in points:
        ctx = SweepContext(out, datasets[to_yaml(point.cfg.data)], rt)
        for seed in cfg.compare.seeds:
            for name in order:
                run_point_arm(point, name, seed, ctx)
    return write_sweep(out)


def collect_point(out: Path, point: dict) -> tuple[list[dict], list[dict]]:
    """A point's finished runs ({"method", "seed", "results"}) and the stage-1 analyses
    of its FASSL arm (``fassl`` when it ran, else the first FASSL arm found)."""
    runs = []
    for name, folder in point["runs"].items():
        for path in sorted((out / folder).glob("seed*/results.json")):
            seed = int(path.parent.name.removeprefix("seed"))
            results = report.read_results(path, "the run is left out as unfinished")
            if results is not None:
                runs.append({"method": name, "seed": seed, "results": results})
    arms = [a for a in point["runs"] if is_pipeline(a)]
    analyses: list[dict] = []
    for arm in sorted(arms, key=lambda a: a != "fassl"):
        files = sorted((out / point["runs"][arm]).glob("seed*/analysis_prototypes.json"))
        read = [report.read_results(p, "left out of the tables") for p in files]
        analyses = [a for a in read if a is not None]
        if analyses:
            break
    return runs, analyses


def _group_notes(points: list[dict], collected: list[tuple[list[dict], list[dict]]]) -> list[str]:
    """Which classes are Frequent / Medium / Rare: once when every point has the same
    groups (a K or tau sweep), else per point (a rho sweep changes the counts)."""
    per_point = []
    for point, (runs, _) in zip(points, collected, strict=True):
        meta = next((r["results"].get("meta", {}) for r in runs if "meta" in r["results"]), {})
        per_point.append((point["label"], report.group_lines(meta)))
    distinct = {tuple(lines) for _, lines in per_point if lines}
    if len(distinct) <= 1:
        return list(next(iter(distinct), ()))
    return [f"{label}: {'; '.join(lines)}" for label, lines in per_point if lines]


def write_sweep(out: Path) -> dict:
    """sweep.md / sweep.csv / sweep_prototypes.csv / sweep.png from ``grid/grid.json``
    and the runs finished so far; returns the per-point summaries."""
    path = Path(out) / GRID_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no sweep in {out}: {path} is missing")
    grid = report.read_json_object(path)
    collected = [collect_point(Path(out), p) for p in grid["points"]]
    sweep = sweep_report.Sweep(
        keys=grid["keys"],
        values=[p["values"] for p in grid["points"]],
        summaries=[tables.summarize(runs) for runs, _ in collected],
        prototypes=[sweep_report.prototype_shares(analyses) for _, analyses in collected],
        shared=sorted(
            {m for p in grid["points"] for m, d in p["runs"].items() if d.startswith("shared/")}
        ),
    )
    groups = _group_notes(grid["points"], collected)
    header = f"# Sweep in {out}\n\n" + "".join(f"- {line}\n" for line in groups)
    write_text(
        out / "sweep.md", header + ("\n" if groups else "") + sweep_report.sweep_markdown(sweep)
    )
    sweep_report.write_sweep_csv(sweep, out / "sweep.csv", out / "sweep_prototypes.csv")
    sweep_report.sweep_plot(sweep, out / "sweep.png")
    print((out / "sweep.md").read_text())
    return {"keys": sweep.keys, "values": sweep.values, "summaries": sweep.summaries}
