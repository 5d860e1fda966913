"""The arms of a comparison: what each name in ``compare.methods`` trains, and from what.

An arm is

- a method of the registry (``simclr``, ``bcl_i``, ``supervised``, ...), trained alone for
  the baselines' epochs (``baseline_epochs``: FASSL's three stages together unless
  ``compare.baseline_epochs`` says otherwise, so every arm sees as many images);
- a FASSL pipeline arm at equal compute (``fassl``, ``fassl_phi1``, ``fassl_<weight>``):
  its own SDCLR teacher trained for ``pipeline.teacher.epochs``; the other FASSL arms
  share ``fassl``'s teacher and stage 1, only phi differs;
- a FASSL arm of the paper's structure (``fassl_from_sdclr``, ``fassl_from_sdclr_phi1``):
  stages 1 and 2 on top of the ``sdclr`` arm's final export (FASSL = SDCLR + two stages),
  beside ``sdclr_continued``, SDCLR trained on from the same export for the same extra
  epochs at stage 2's optimizer settings;
- a variant: a method with some keys set, e.g.
  ``simclr_ts`` (SimCLR with the cosine temperature schedule) or ``ldam_drw_ssp``
  (LDAM-DRW started from the ``ldam.ssp_method`` run of the same seed).

An arm that starts from another arm's run (``starts_from``) has it trained first, and
added to the comparison when it is not listed. ``fassl compare`` and its sweeps
(``fassl.compare.sweep``) both build their runs' configs here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from fassl.config import Config, OptimConfig
from fassl.data import LongTailData
from fassl.distributed import on_main
from fassl.names import EXPORT, RESULTS
from fassl.rebalance import REWEIGHTERS
from fassl.registry import ARMS, Arm
from fassl.report import read_results
from fassl.runs.pipeline import run_pipeline
from fassl.runs.pretrain import run_pretrain
from fassl.runtime import Runtime
from fassl.validation import get_dotted


def baseline_epochs(cfg: Config) -> int:
    p = cfg.pipeline
    return cfg.compare.baseline_epochs or (
        p.teacher.epochs + p.prototypes.epochs + p.rebalance.epochs
    )


def arm_record(name: str) -> Arm:
    """The record of arm ``name`` (``fassl.registry.ARMS``); config validation has
    checked the name."""
    return ARMS[name]


def arm_weight(name: str) -> str | None:
    """The stage-2 weight of a FASSL arm: None for the configured one (``fassl``,
    ``fassl_from_sdclr``), ``none`` for the phi = 1 arms, ``<weight>`` for fassl_<weight>
    (a name of ``fassl.rebalance.REWEIGHTERS``)."""
    return arm_record(name).weight


def stage1_lead(name: str) -> str:
    """The FASSL arm whose teacher and stage 1 the FASSL arm ``name`` shares (itself when
    it trains its own)."""
    return arm_record(name).lead or name


def arm_method(name: str) -> str:
    """The registered method an arm trains (``fassl`` for the pipeline arms)."""
    return arm_record(name).method


def is_pipeline(name: str) -> bool:
    return arm_record(name).pipeline


def starts_from(name: str, cfg: Config) -> tuple[str, str] | None:
    """(arm, config key): the arm whose final export of the same seed this arm starts
    from, and the key that takes its path; None for an arm trained from scratch."""
    a = arm_record(name)
    source = get_dotted(cfg, a.start_arm_key) if a.start_arm_key else a.start_arm
    return (source, a.start_key) if source else None


def dependencies(name: str, cfg: Config) -> list[str]:
    """Arms whose runs this arm starts from: what ``starts_from`` names, and for a FASSL
    arm that shares another's stage 1, that arm when it is compared too."""
    deps = [start[0]] if (start := starts_from(name, cfg)) else []
    lead = stage1_lead(name)
    if name != lead and lead in cfg.compare.methods:
        deps.append(lead)
    return deps


def continued_optim(cfg: Config) -> OptimConfig:
    """A continued arm's optimizer (``sdclr_continued``): stage 2's settings, for the
    epochs FASSL adds on top of its teacher (stages 1 and 2 together)."""
    p = cfg.pipeline
    optim = copy.deepcopy(p.rebalance)
    optim.epochs = p.prototypes.epochs + p.rebalance.epochs
    return optim


def arm_order(cfg: Config) -> list[str]:
    """``compare.methods`` with every arm after the arms it starts from (missing ones
    added), otherwise in the given order."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for dep in dependencies(name, cfg):
            visit(dep)
        order.append(name)

    for name in sorted(cfg.compare.methods, key=lambda m: m != "fassl"):
        visit(name)
    return order


def set_dotted(cfg: Any, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    target = cfg
    for part in parents:
        target = getattr(target, part)
    setattr(target, leaf, value)


def run_config(cfg: Config, name: str, seed: int, out: Path) -> Config:
    """The config of arm ``name`` at ``seed``, its runs in ``out/<name>/seed<k>/``."""
    a = arm_record(name)
    c = copy.deepcopy(cfg)
    c.seed = seed
    c.out_dir = str(out / name / f"seed{seed}")
    if a.pipeline:
        if a.weight is not None:
            c.rebalance.weight = a.weight
            strength = REWEIGHTERS[a.weight].arm_strength
            if strength is not None:  # e.g. fassl_paper: Eq. 3 as written, spread included
                c.rebalance.strength = strength
        lead = stage1_lead(name)
        if name != lead and lead in cfg.compare.methods and not cfg.pipeline.prototypes_checkpoint:
            # The other arms share the lead's teacher and prototypes: only phi differs.
            shared = out / lead / f"seed{seed}" / "prototypes" / EXPORT
            c.pipeline.prototypes_checkpoint = str(shared)
    else:
        c.method = a.method
        c.optim = continued_optim(cfg) if a.continued else copy.deepcopy(cfg.optim)
        if not a.continued:
            c.optim.epochs = baseline_epochs(cfg)
    for key, value in a.keys:
        set_dotted(c, key, value)
    if start := starts_from(name, cfg):
        source, key = start
        set_dotted(c, key, str(out / source / f"seed{seed}" / EXPORT))
    return c


def bases_of(name: str) -> list[str]:
    """The arms ``name`` differs from by one mechanism or by more training (BCL-I ->
    SimCLR, a FASSL weight -> phi = 1, the paper's FASSL -> its phi = 1 and SDCLR trained
    on as long, ...); empty for a base itself."""
    a = ARMS.get(name)  # a table row that is no arm (``fassl_teacher``) has no base
    return list(a.bases) if a else []


def base_of(name: str) -> str | None:
    """The first of ``bases_of``, None for a base itself."""
    bases = bases_of(name)
    return bases[0] if bases else None


def arm_structure(name: str, cfg: Config) -> str:
    """One line saying how arm ``name`` is trained, for the comparison's notes."""
    a, p = arm_record(name), cfg.pipeline
    extra = p.prototypes.epochs + p.rebalance.epochs
    if a.continued:
        return f"{name}: the {a.start_arm} arm's export trained {extra} more epochs at stage 2's lr"
    if a.pipeline and a.start_arm:
        return (
            f"{name}: paper's structure, stages 1-2 ({extra} epochs) on the {a.start_arm} "
            f"arm's {baseline_epochs(cfg)}-epoch export"
        )
    if a.pipeline:
        return (
            f"{name}: equal compute, its own {p.teacher.epochs}-epoch SDCLR teacher + "
            f"{extra} epochs of stages 1-2"
        )
    start = starts_from(name, cfg)
    source = f" from the {start[0]} arm's export" if start else ""
    return f"{name}: {baseline_epochs(cfg)} epochs{source}"


def run_arm(c: Config, name: str, data: LongTailData, rt: Runtime) -> dict:
    """The results of arm ``name``'s run ``c`` (``run_config``): its results.json when the
    run finished (and the file reads), else the run trained now (the pipeline for a FASSL
    arm). The file is read by rank 0 alone, so under torchrun every rank reuses or trains
    the same runs."""
    done = Path(c.out_dir) / RESULTS
    results = on_main(lambda: read_results(done))  # a damaged file: probed again
    if results is not None:
        return results
    train = run_pipeline if is_pipeline(name) else run_pretrain
    return train(c, rt, data=data)
