"""The settings a stage was trained with, recorded in its folder and checked on a rerun.

A rerun into an existing run folder resumes or reuses what is there. That is only right
when the config still describes what was trained, so every stage folder holds
``settings.json``: the flattened config keys that change what the stage learns. A rerun
whose keys differ is a ``RunConflict`` naming them, unless the stage is restarted
(``--restart``), which removes its training outputs and those of the stages after it.

Keys that change only where or how fast a stage runs, or what happens after training
(``NEUTRAL``), are not recorded. A pipeline stage records its own keys and those of the
stages it starts from. A trained folder without the record (deleted, or from before it
existed) is checked against its config.yaml and checkpoint, and gets the record again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fassl.config import Config, OptimConfig, load_config, optim_key, to_dict, to_yaml
from fassl.errors import ConfigError, RunConflict
from fassl.files import write_text
from fassl.methods import METHODS
from fassl.names import CONFIG, EXPORT, LAST, PIPELINE_STAGES, RUN, SETTINGS, STAGE_METHODS
from fassl.train.checkpoint import check_owner, read_meta
from fassl.validation import NEUTRAL as NEUTRAL_META
from fassl.validation import absolute_path, keys_with, path_keys

# keys (or whole sections) that never change what a stage learns: the fields marked
# rerun-neutral where they are declared (fassl.validation.neutral)
NEUTRAL = keys_with(Config(), NEUTRAL_META)
# keys naming files, compared as absolute paths
PATH_KEYS = path_keys(Config())
# every section some method reads as its own (the others are shared by all methods)
_ALL_SECTIONS = {s for cls in METHODS.values() for s in cls.sections}


def method_sections(method: str) -> tuple[str, ...]:
    """The config sections of ``method``'s own settings (the class declares them)."""
    return METHODS[method].sections if method in METHODS else ()


# training outputs of a stage folder, removed by a restart (reports are rewritten anyway)
OUTPUTS = (EXPORT, "checkpoints", "metrics.jsonl", "tb", SETTINGS)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


# keys that may differ between the processes of one torchrun run: where each machine
# keeps its cache, how many workers and how much memory it gives decoding, its progress bar
PER_MACHINE = ("data.cache_dir", "data.download", "data.workers", "data.max_memory_gb")
PER_MACHINE += ("train.progress",)


def run_settings(cfg: Config) -> dict[str, Any]:
    """Every flattened key of ``cfg`` that all processes of a run must share (all but
    ``PER_MACHINE``), as JSON values."""
    flat = _flat(to_dict(cfg))
    return json.loads(json.dumps({k: v for k, v in flat.items() if k not in PER_MACHINE}))


def _chain(cfg: Config, stage: str) -> tuple[list[str], list[str]]:
    """(the pipeline stages whose keys shape ``stage``, the given checkpoint keys)."""
    chain = list(PIPELINE_STAGES[: PIPELINE_STAGES.index(stage) + 1])
    if cfg.pipeline.prototypes_checkpoint and stage == "rebalance":
        return ["rebalance"], ["pipeline.prototypes_checkpoint"]
    if cfg.pipeline.teacher_checkpoint and stage != "teacher":
        return chain[1:], ["pipeline.teacher_checkpoint"]
    return chain, []


def _relevant(key: str, sections: set[str], pipeline: tuple[str, ...]) -> bool:
    if any(key == n or key.startswith(n + ".") for n in NEUTRAL):
        return False
    head = key.partition(".")[0]
    if head in _ALL_SECTIONS:
        return head in sections
    if head in ("pipeline", "optim", "method") or key == "train.init_from":
        return any(key == p or key.startswith(p + ".") for p in pipeline)
    return True


def settings_for(cfg: Config, method: str, optim_cfg: OptimConfig) -> dict[str, Any]:
    """The flattened keys that change what training ``method`` with ``optim_cfg`` learns."""
    section = optim_key(cfg, optim_cfg)
    tree = to_dict(cfg)
    if section == "optim":  # a single-method run (possibly with a copied optimizer)
        tree |= {"optim": to_dict(optim_cfg), "method": method}
        sections, keys = set(method_sections(method)), ("optim", "method")
        keys += ("train.init_from",)
    else:
        chain, given = _chain(cfg, section.partition(".")[2])
        sections = {s for st in chain for s in method_sections(STAGE_METHODS[st])}
        keys = (*(f"pipeline.{st}" for st in chain), *given)
    flat = _flat(tree)
    return json.loads(json.dumps({k: v for k, v in flat.items() if _relevant(k, sections, keys)}))


def _recorded(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / SETTINGS
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunConflict(f"{path} is unreadable ({err}); delete it to use the folder") from err
    return data if isinstance(data, dict) else None


def _has_outputs(run_dir: Path) -> bool:
    return (run_dir / OUTPUTS[0]).is_file() or (run_dir / LAST).is_file()


def restart_flag(section: str) -> str:
    """The command-line flag that trains the stage of optimizer ``section`` again."""
    stage = RUN if section == "optim" else section.partition(".")[2]
    return "--restart" if stage == RUN else f"--restart {stage}"


def diverged_hint(cfg: Config, optim_cfg: OptimConfig, run_dir: Path) -> str:
    """How to train a diverged stage again: resuming would repeat the divergence (a resumed
    run continues exactly), and a lower learning rate is another setting, so it needs the
    stage's --restart."""
    section = optim_key(cfg, optim_cfg)
    return (
        f"To train {run_dir} again with a lower {section}.lr (or train.precision=fp32), add "
        f"{restart_flag(section)} to the same command (for a fassl compare run, delete "
        f"{run_dir} first)"
    )


def _restart_hint(run_dir: Path, section: str) -> str:
    stage = RUN if section == "optim" else section.partition(".")[2]
    flag = restart_flag(section)
    return (
        f"use another out_dir, put the settings back, or pass {flag} to train "
        f"{run_dir} again{'' if stage == RUN else ' (and the stages after it)'}"
    )


def _check_last(run_dir: Path, method: str) -> None:
    """The checkpoint in a folder without a settings record belongs to this stage."""
    last = run_dir / LAST
    if not last.is_file() or (run_dir / OUTPUTS[0]).is_file():
        return  # nothing to resume, or finished: the checkpoint is not used
    check_owner(last, read_meta(last), run_dir.name, method)


def _from_config_file(
    cfg: Config, method: str, optim_cfg: OptimConfig, run_dir: Path
) -> dict[str, Any] | None:
    """The settings of the config.yaml the stage wrote when it started training, for a
    folder whose settings.json is gone; None without one that loads."""
    path = run_dir / CONFIG
    if not path.is_file():
        return None
    try:
        old = load_config(path)
    except (ConfigError, OSError, ValueError):  # a config of another version: not usable
        return None
    section = optim_key(cfg, optim_cfg)
    stage = section.partition(".")[2]
    old_optim = old.optim if section == "optim" else getattr(old.pipeline, stage)
    return settings_for(old, method, old_optim)


def _from_checkpoint(cfg: Config, optim_cfg: OptimConfig, run_dir: Path) -> dict[str, Any]:
    """What the stage's checkpoint records of its settings (the model and the epochs), as
    settings keys; empty without a checkpoint, or when the export is there (finished: the
    checkpoint is not used)."""
    last = run_dir / LAST
    if not last.is_file() or (run_dir / EXPORT).is_file():
        return {}
    meta = read_meta(last)
    found = _flat(meta["model"], "model.") if isinstance(meta.get("model"), dict) else {}
    if "epochs" in meta:
        found[f"{optim_key(cfg, optim_cfg)}.epochs"] = meta["epochs"]
    return found


def _recorded_elsewhere(
    cfg: Config, method: str, optim_cfg: OptimConfig, run_dir: Path
) -> tuple[dict[str, Any], str]:
    """A trained folder without settings.json: its settings as its config.yaml (written
    when it started) and its checkpoint record them, and where they were read."""
    _check_last(run_dir, method)
    from_file = _from_config_file(cfg, method, optim_cfg, run_dir) or {}
    from_last = _from_checkpoint(cfg, optim_cfg, run_dir)
    where = [n for n, found in ((CONFIG, from_file), (LAST, from_last)) if found]
    return from_file | from_last, " and ".join(where)


def check_stage(cfg: Config, method: str, optim_cfg: OptimConfig, run_dir: Path) -> dict:
    """The stage's settings; RunConflict when ``run_dir`` was trained with others.

    Without settings.json (deleted, or a folder from before it existed) the settings come
    from the stage's config.yaml and checkpoint, so a lost record never lets a rerun
    resume under other settings."""
    settings = settings_for(cfg, method, optim_cfg)
    recorded = _recorded(run_dir)
    if not _has_outputs(run_dir):
        return settings
    source = ""
    if recorded is None:
        recorded, where = _recorded_elsewhere(cfg, method, optim_cfg, run_dir)
        source = f" (by its {where}; {SETTINGS} is missing)" if where else ""
    changed = [k for k in settings if k in recorded and not _same(k, recorded[k], settings[k])]
    if changed:
        shown = ", ".join(f"{k} {recorded[k]!r} -> {settings[k]!r}" for k in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise RunConflict(
            f"{run_dir} was trained with other settings{source}: {shown}{more}\n"
            + _restart_hint(run_dir, optim_key(cfg, optim_cfg))
        )
    return settings


def _same(key: str, recorded: Any, value: Any) -> bool:
    """Equal settings; a path key compares as an absolute path, so a run recorded with a
    relative path (before paths were recorded absolute) resumes from the same folder."""
    if key in PATH_KEYS and isinstance(recorded, str) and isinstance(value, str):
        return absolute_path(recorded) == absolute_path(value)
    return recorded == value


def record_settings(run_dir: Path, settings: dict[str, Any]) -> None:
    """Write ``settings.json`` (after ``check_stage``): again when it is missing from a
    trained folder too, so later changes are noticed from the record itself."""
    text = json.dumps(settings, indent=1, sort_keys=True) + "\n"
    write_text(run_dir / SETTINGS, text)


def clear_stage(run_dir: Path) -> None:
    """Remove a stage's training outputs so that it trains from scratch."""
    removed = []
    for name in OUTPUTS:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    if removed:
        print(f"[{run_dir.name}] restart: removed {', '.join(removed)} in {run_dir}")


def pipeline_stages(cfg: Config) -> list[str]:
    """The stages ``run_pipeline`` trains (a given checkpoint skips those before it)."""
    if cfg.pipeline.prototypes_checkpoint:
        return ["rebalance"]
    if cfg.pipeline.teacher_checkpoint:
        return ["prototypes", "rebalance"]
    return list(PIPELINE_STAGES)


def prepare_pipeline(cfg: Config, restart: str = "") -> list[Path]:
    """Before any work: check every stage the pipeline trains except ``restart`` and the
    stages after it, which are returned (``start_run`` clears them once the data loaded)."""
    out, stages = Path(cfg.out_dir), pipeline_stages(cfg)
    if restart and restart not in stages:
        raise ConfigError(
            f"--restart {restart}: this pipeline trains only {stages} (a pipeline.*_checkpoint "
            "is given for the stages before)"
        )
    first = stages.index(restart) if restart else len(stages)
    for stage in stages[:first]:
        check_stage(cfg, STAGE_METHODS[stage], getattr(cfg.pipeline, stage), out / stage)
    return [out / stage for stage in stages[first:]]


def prepare_run(cfg: Config, restart: bool = False) -> list[Path]:
    """``prepare_pipeline`` for a single-method run in ``out_dir``."""
    out = Path(cfg.out_dir)
    if restart:
        return [out]
    check_stage(cfg, cfg.method, cfg.optim, out)
    return []


def start_run(cfg: Config, restarted: list[Path]) -> None:
    """Once everything is checked: clear the restarted stages, write ``config.yaml``."""
    for run_dir in restarted:
        clear_stage(run_dir)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / CONFIG, to_yaml(cfg))
