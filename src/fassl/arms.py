"""The arms of a comparison: what each name in ``compare.methods`` trains, and from what.

An arm is

- a method of the registry (``simclr``, ``bcl_i``, ``supervised``, ...), trained alone for
  the baselines' epochs (``baseline_epochs``: FASSL's three stages together unless
  ``compare.baseline_epochs`` says otherwise, so every arm sees as many images);
- a FASSL pipeline arm (``fassl``, ``fassl_phi1``, ``fassl_<weight>``): the other FASSL
  arms share ``fassl``'s teacher and stage 1, only phi differs;
- a variant (``fassl.config.METHOD_VARIANTS``): a method with some keys set, e.g.
  ``simclr_ts`` (SimCLR with the cosine temperature schedule) or ``ldam_drw_ssp``
  (LDAM-DRW started from the ``ldam.ssp_method`` run of the same seed, which is trained
  first, and added to the comparison when it is not listed).

``fassl compare`` and its sweeps (``fassl.sweep``) both build their runs' configs here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from fassl.config import FASSL_ARMS, METHOD_VARIANTS, Config
from fassl.names import EXPORT
from fassl.reweight import REWEIGHTERS


def baseline_epochs(cfg: Config) -> int:
    p = cfg.pipeline
    return cfg.compare.baseline_epochs or (
        p.teacher.epochs + p.prototypes.epochs + p.rebalance.epochs
    )


def arm_weight(name: str) -> str:
    """The stage-2 weight of a FASSL arm other than ``fassl``: fassl_phi1 -> none,
    fassl_<weight> -> <weight> (a name of ``fassl.reweight.REWEIGHTERS``)."""
    return "none" if name == "fassl_phi1" else name.removeprefix("fassl_")


def arm_method(name: str) -> str:
    """The registered method an arm trains (``fassl`` for the pipeline arms)."""
    if name in FASSL_ARMS:
        return "fassl"
    return METHOD_VARIANTS[name][0] if name in METHOD_VARIANTS else name


def is_pipeline(name: str) -> bool:
    return name in FASSL_ARMS


def dependencies(name: str, cfg: Config) -> list[str]:
    """Arms whose runs this arm starts from: ``ldam_drw_ssp`` -> ``ldam.ssp_method``;
    the other FASSL arms -> ``fassl`` when it is compared too."""
    if name == "ldam_drw_ssp":
        return [cfg.ldam.ssp_method]
    if name in FASSL_ARMS and name != "fassl" and "fassl" in cfg.compare.methods:
        return ["fassl"]
    return []


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
        if name != "fassl":
            # The other arms share FASSL's teacher and prototypes: only phi differs.
            c.rebalance.weight = arm_weight(name)
            strength = REWEIGHTERS[c.rebalance.weight].arm_strength
            if strength is not None:  # e.g. fassl_paper: Eq. 3 as written, spread included
                c.rebalance.strength = strength
            shared = out / "fassl" / f"seed{seed}" / "prototypes" / EXPORT
            if "fassl" in cfg.compare.methods and not cfg.pipeline.prototypes_checkpoint:
                c.pipeline.prototypes_checkpoint = str(shared)
        return c
    c.method = arm_method(name)
    c.optim = copy.deepcopy(cfg.optim)
    c.optim.epochs = baseline_epochs(cfg)
    for key, value in METHOD_VARIANTS.get(name, ("", {}))[1].items():
        set_dotted(c, key, value)
    if name == "ldam_drw_ssp":  # SSP: from the self-supervised run of the same seed
        c.train.init_from = str(out / cfg.ldam.ssp_method / f"seed{seed}" / EXPORT)
    return c


# The arm each label-free mechanism is measured against: the same method without it.
_BASES = {"bcl_i": "simclr", "bcl_d": "sdclr", "ldam_drw": "supervised"}


def base_of(name: str) -> str | None:
    """The arm ``name`` differs from by one mechanism: BCL-I -> SimCLR, BCL-D -> SDCLR,
    ``<method>_ts`` -> the method, a FASSL weight -> phi = 1, LDAM-DRW(+SSP) ->
    supervised; None for a base itself."""
    if name in FASSL_ARMS:
        return None if name == "fassl_phi1" else "fassl_phi1"
    if name in METHOD_VARIANTS:
        method, keys = METHOD_VARIANTS[name]
        return _BASES.get(method, method) if keys.get("temperature.schedule") is None else method
    return _BASES.get(name)
