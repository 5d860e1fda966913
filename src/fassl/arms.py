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
- a variant (``fassl.config.METHOD_VARIANTS``): a method with some keys set, e.g.
  ``simclr_ts`` (SimCLR with the cosine temperature schedule) or ``ldam_drw_ssp``
  (LDAM-DRW started from the ``ldam.ssp_method`` run of the same seed).

An arm that starts from another arm's run (``starts_from``) has it trained first, and
added to the comparison when it is not listed. ``fassl compare`` and its sweeps
(``fassl.sweep``) both build their runs' configs here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from fassl.config import FASSL_ARMS, METHOD_VARIANTS, PAPER_ARMS, Config, OptimConfig
from fassl.names import EXPORT
from fassl.reweight import REWEIGHTERS


def baseline_epochs(cfg: Config) -> int:
    p = cfg.pipeline
    return cfg.compare.baseline_epochs or (
        p.teacher.epochs + p.prototypes.epochs + p.rebalance.epochs
    )


def arm_weight(name: str) -> str | None:
    """The stage-2 weight of a FASSL arm: None for the configured one (``fassl``,
    ``fassl_from_sdclr``), ``none`` for the phi = 1 arms, ``<weight>`` for fassl_<weight>
    (a name of ``fassl.reweight.REWEIGHTERS``)."""
    if name in ("fassl", PAPER_ARMS[0]):
        return None
    return "none" if name.endswith("_phi1") else name.removeprefix("fassl_")


def stage1_lead(name: str) -> str:
    """The FASSL arm whose teacher and stage 1 the FASSL arm ``name`` shares."""
    return PAPER_ARMS[0] if name in PAPER_ARMS else "fassl"


def arm_method(name: str) -> str:
    """The registered method an arm trains (``fassl`` for the pipeline arms)."""
    if name in FASSL_ARMS:
        return "fassl"
    return METHOD_VARIANTS[name][0] if name in METHOD_VARIANTS else name


def is_pipeline(name: str) -> bool:
    return name in FASSL_ARMS


def starts_from(name: str, cfg: Config) -> tuple[str, str] | None:
    """(arm, config key): the arm whose final export of the same seed this arm starts
    from, and the key that takes its path; None for an arm trained from scratch."""
    if name == "ldam_drw_ssp":  # SSP: from the self-supervised run of the same seed
        return cfg.ldam.ssp_method, "train.init_from"
    if name == "sdclr_continued":
        return "sdclr", "train.init_from"
    if name in PAPER_ARMS:
        return "sdclr", "pipeline.teacher_checkpoint"
    return None


def dependencies(name: str, cfg: Config) -> list[str]:
    """Arms whose runs this arm starts from: what ``starts_from`` names, and for a FASSL
    arm that shares another's stage 1, that arm when it is compared too."""
    deps = [start[0]] if (start := starts_from(name, cfg)) else []
    lead = stage1_lead(name)
    if name in FASSL_ARMS and name != lead and lead in cfg.compare.methods:
        deps.append(lead)
    return deps


def continued_optim(cfg: Config) -> OptimConfig:
    """``sdclr_continued``'s optimizer: stage 2's settings, for the epochs FASSL adds on
    top of its teacher (stages 1 and 2 together)."""
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
    c = copy.deepcopy(cfg)
    c.seed = seed
    c.out_dir = str(out / name / f"seed{seed}")
    if name in FASSL_ARMS:
        weight = arm_weight(name)
        if weight is not None:
            c.rebalance.weight = weight
            strength = REWEIGHTERS[weight].arm_strength
            if strength is not None:  # e.g. fassl_paper: Eq. 3 as written, spread included
                c.rebalance.strength = strength
        lead = stage1_lead(name)
        if name != lead and lead in cfg.compare.methods and not cfg.pipeline.prototypes_checkpoint:
            # The other arms share the lead's teacher and prototypes: only phi differs.
            shared = out / lead / f"seed{seed}" / "prototypes" / EXPORT
            c.pipeline.prototypes_checkpoint = str(shared)
    else:
        c.method = arm_method(name)
        c.optim = continued_optim(cfg) if name == "sdclr_continued" else copy.deepcopy(cfg.optim)
        if name != "sdclr_continued":
            c.optim.epochs = baseline_epochs(cfg)
        for key, value in METHOD_VARIANTS.get(name, ("", {}))[1].items():
            set_dotted(c, key, value)
    if start := starts_from(name, cfg):
        arm, key = start
        set_dotted(c, key, str(out / arm / f"seed{seed}" / EXPORT))
    return c


# The arm each label-free mechanism is measured against: the same method without it.
_BASES = {"bcl_i": "simclr", "bcl_d": "sdclr", "ldam_drw": "supervised"}
# The paper's structure: FASSL from SDCLR against phi = 1 from the same stage 1 and SDCLR
# trained on for as long; that continuation against the SDCLR it started from.
_PAPER_BASES = {
    PAPER_ARMS[0]: [PAPER_ARMS[1], "sdclr_continued"],
    PAPER_ARMS[1]: ["sdclr_continued"],
    "sdclr_continued": ["sdclr"],
}


def bases_of(name: str) -> list[str]:
    """The arms ``name`` differs from by one mechanism or by more training: BCL-I ->
    SimCLR, BCL-D -> SDCLR, ``<method>_ts`` -> the method, a FASSL weight -> phi = 1,
    LDAM-DRW(+SSP) -> supervised, the paper's structure as ``_PAPER_BASES``; empty for
    a base itself."""
    if name in _PAPER_BASES:
        return list(_PAPER_BASES[name])
    if name in FASSL_ARMS:
        return [] if name == "fassl_phi1" else ["fassl_phi1"]
    if name in METHOD_VARIANTS:
        method, keys = METHOD_VARIANTS[name]
        if keys.get("temperature.schedule") is not None:
            return [method]
        return [_BASES.get(method, method)]
    return [_BASES[name]] if name in _BASES else []


def base_of(name: str) -> str | None:
    """The first of ``bases_of``, None for a base itself."""
    bases = bases_of(name)
    return bases[0] if bases else None


def arm_structure(name: str, cfg: Config) -> str:
    """One line saying how arm ``name`` is trained, for the comparison's notes."""
    p = cfg.pipeline
    extra = p.prototypes.epochs + p.rebalance.epochs
    if name in PAPER_ARMS:
        return (
            f"{name}: paper's structure, stages 1-2 ({extra} epochs) on the sdclr arm's "
            f"{baseline_epochs(cfg)}-epoch export"
        )
    if name in FASSL_ARMS:
        return (
            f"{name}: equal compute, its own {p.teacher.epochs}-epoch SDCLR teacher + "
            f"{extra} epochs of stages 1-2"
        )
    if name == "sdclr_continued":
        return f"{name}: the sdclr arm's export trained {extra} more epochs at stage 2's lr"
    start = starts_from(name, cfg)
    source = f" from the {start[0]} arm's export" if start else ""
    return f"{name}: {baseline_epochs(cfg)} epochs{source}"
