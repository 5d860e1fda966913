"""Every name a user types, declared once (methods, stage-2 weights, data sources,
backbones and the arms of ``fassl compare``).

Torch-free, so the config layer, validation and the command line read names and choices
from here without loading a network. Each entry points at what implements it as
``"module:attribute"``; the layer that owns it loads it (``fassl.methods.METHODS``,
``fassl.rebalance.REWEIGHTERS``, ``fassl.data.sources.SOURCES``), so a new method is its
module, its test and one line below (docs/architecture.md, "Adding a method").
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

# method name -> its class (a fassl.methods.base.Method)
METHOD_CLASSES: dict[str, str] = {
    "simclr": "fassl.methods.simclr:SimCLR",
    "sdclr": "fassl.methods.sdclr:SDCLR",
    "byol": "fassl.methods.byol:BYOL",
    "swav": "fassl.methods.swav:SwAV",
    "dino": "fassl.methods.dino:DINO",
    "fassl_prototypes": "fassl.methods.fassl:PrototypeLearning",
    "fassl_rebalance": "fassl.methods.fassl:RebalancedBYOL",
    "supervised": "fassl.methods.supervised:Supervised",
    "bcl_i": "fassl.methods.bcl:BCLSimCLR",
    "bcl_d": "fassl.methods.bcl:BCLSDCLR",
    "simclr_gh": "fassl.methods.gh:GHSimCLR",
    "sdclr_gh": "fassl.methods.gh:GHSDCLR",
    "ldam_drw": "fassl.methods.ldam:LDAMDRW",
}
# the methods that pre-train an encoder from scratch without labels: what a run may name
# as its self-supervised start (ldam.ssp_method, LDAM-DRW+SSP)
SELF_SUPERVISED = (
    "simclr",
    "sdclr",
    "byol",
    "swav",
    "dino",
    "bcl_i",
    "bcl_d",
    "simclr_gh",
    "sdclr_gh",
)
# rebalance.weight -> its class (log phi of stage 2: Eq. 3 and its label-free variants;
# none = phi 1, the paper's ablation)
WEIGHT_CLASSES: dict[str, str] = {
    "paper": "fassl.rebalance.reweighters:PaperWeight",
    "paper_normalized": "fassl.rebalance.reweighters:PaperNormalizedWeight",
    "softmax_density": "fassl.rebalance.reweighters:SoftmaxDensityWeight",
    "cluster_size": "fassl.rebalance.reweighters:ClusterSizeWeight",
    "knn": "fassl.rebalance.reweighters:KnnWeight",
    "none": "fassl.rebalance.reweighters:NoWeight",
}


@dataclass(frozen=True)
class Source:
    """A ``data.dataset``: its loader (DataConfig, seed) -> LongTailData, whether it reads
    ``data.root`` (else it is built in, or downloads into the cache), and whether a tool's
    DATA argument may name it (``fassl embed CHECKPOINT cifar10``)."""

    loader: str
    needs_root: bool
    by_name: bool = True


SOURCES: dict[str, Source] = {
    "digits": Source("fassl.data.sources.digits:load", needs_root=False),
    "cifar10": Source("fassl.data.sources.cifar:load", needs_root=False),
    "cifar100": Source("fassl.data.sources.cifar:load", needs_root=False),
    "folder": Source("fassl.data.sources.folder:load", needs_root=True, by_name=False),
    "splitfile": Source("fassl.data.sources.splitfile:load", needs_root=True, by_name=False),
    "tinyimagenet": Source("fassl.data.sources.tinyimagenet:load", needs_root=True),
}

# model.arch: the project's own ResNets by name, or any model of a library as
# "<library>:<name>" (fassl.models.library builds it; the library is an optional extra)
ARCHS = ("resnet18", "resnet50")
LIBRARIES = {"timm": "fassl[timm]", "torchvision": "fassl[torchvision]"}  # -> pip extra
# what a run records for a module handed to fassl.fit(backbone=...): never built by name
CUSTOM = "module"


def split_arch(arch: str) -> tuple[str | None, str]:
    """``"timm:vit_tiny_patch16_224"`` -> ("timm", "vit_tiny_patch16_224"); a built-in
    ResNet -> (None, its name)."""
    library, sep, name = arch.partition(":")
    return (library, name) if sep else (None, arch)


def arch_problem(arch: str) -> str | None:
    """Why ``arch`` is not a model.arch this project can build; None when it is."""
    library, name = split_arch(arch)
    if library is None:
        if arch in ARCHS:
            return None
        return f"{arch!r} is not one of {list(ARCHS)} (or timm:<name> / torchvision:<name>)"
    if library == CUSTOM:
        return f"{arch!r} was a module given to fassl.fit: pass the module again (init=)"
    if library not in LIBRARIES:
        return f"{library!r} is not a model library: expected one of {list(LIBRARIES)}"
    return None if name else f"{arch!r} names no model after the colon"


METHOD_NAMES = tuple(METHOD_CLASSES)
WEIGHTS = tuple(WEIGHT_CLASSES)
DATASETS = tuple(SOURCES)
ROOT_DATASETS = tuple(name for name, s in SOURCES.items() if s.needs_root)
NAMED_DATASETS = tuple(name for name, s in SOURCES.items() if s.by_name)


@dataclass(frozen=True)
class Arm:
    """One arm of ``fassl compare``: what it trains, what it starts from, and what it is
    measured against (``fassl.compare.arms`` turns it into a run's config).

    ``method``: a name of ``METHOD_CLASSES``, or ``fassl`` for the FASSL pipeline.
    ``keys``: config keys the arm sets, as (dotted key, value).
    ``bases``: the arms it differs from by one mechanism (or by more training), for the
    difference tables.
    ``start_arm`` / ``start_arm_key``: the arm whose final export of the same seed it
    starts from, named here or by a config key (``ldam.ssp_method``); ``start_key`` takes
    that export's path.
    ``lead``: for a FASSL arm, the arm whose teacher and stage 1 it shares ("" = its own).
    ``weight``: a FASSL arm's stage-2 weight (None: the configured ``rebalance.weight``).
    ``continued``: trained for stages 1 + 2's epochs at stage 2's optimizer settings
    instead of the baselines' epochs.
    ``structure``: how it is trained, for the help and the comparison's notes.
    """

    name: str
    method: str
    keys: tuple[tuple[str, Any], ...] = ()
    bases: tuple[str, ...] = ()
    start_arm: str = ""
    start_arm_key: str = ""
    start_key: str = ""
    lead: str = ""
    weight: str | None = None
    continued: bool = False
    structure: str = "method"

    @property
    def pipeline(self) -> bool:
        return self.method == "fassl"


# what each label-free mechanism is measured against: the same method without it
_METHOD_BASES = {
    "bcl_i": ("simclr",),
    "bcl_d": ("sdclr",),
    "simclr_gh": ("simclr",),
    "sdclr_gh": ("sdclr",),
    "ldam_drw": ("supervised",),
}
EQUAL_COMPUTE = "equal compute"  # FASSL with its own teacher, as many images as a baseline
PAPER_STRUCTURE = "paper"  # FASSL on the sdclr arm's export (Algorithm 1)


def _arms() -> dict[str, Arm]:
    arms = [Arm(m, m, bases=_METHOD_BASES.get(m, ())) for m in METHOD_NAMES]
    arms.append(Arm("fassl", "fassl", bases=("fassl_phi1",), structure=EQUAL_COMPUTE))
    # the same teacher and stage 1 as fassl, another weight: phi = 1 first, then each variant
    for w in ("none", *(w for w in WEIGHTS if w != "none")):
        name = "fassl_phi1" if w == "none" else f"fassl_{w}"
        bases = () if w == "none" else ("fassl_phi1",)
        equal = Arm(name, "fassl", bases=bases, lead="fassl", weight=w, structure=EQUAL_COMPUTE)
        arms.append(equal)
    from_sdclr = {"start_arm": "sdclr", "start_key": "pipeline.teacher_checkpoint"}
    arms += [
        Arm(
            "fassl_from_sdclr",
            "fassl",
            bases=("fassl_from_sdclr_phi1", "sdclr_continued"),
            structure=PAPER_STRUCTURE,
            **from_sdclr,
        ),
        Arm(
            "fassl_from_sdclr_phi1",
            "fassl",
            bases=("sdclr_continued",),
            lead="fassl_from_sdclr",
            weight="none",
            structure=PAPER_STRUCTURE,
            **from_sdclr,
        ),
        # FASSL's stages 1-2 on GH's SDCLR (the paper's structure on another teacher)
        Arm(
            "fassl_from_sdclr_gh",
            "fassl",
            bases=("sdclr_gh",),
            start_arm="sdclr_gh",
            start_key="pipeline.teacher_checkpoint",
            structure=PAPER_STRUCTURE,
        ),
        Arm("simclr_ts", "simclr", (("temperature.schedule", "cosine"),), ("simclr",)),
        Arm("sdclr_ts", "sdclr", (("temperature.schedule", "cosine"),), ("sdclr",)),
        Arm("bcl_i_common", "bcl_i", (("bcl.ops", "common"),), ("simclr",)),
        Arm("bcl_d_common", "bcl_d", (("bcl.ops", "common"),), ("sdclr",)),
        Arm(
            "ldam_drw_ssp",
            "ldam_drw",
            bases=("supervised",),
            start_arm_key="ldam.ssp_method",
            start_key="train.init_from",
        ),
        Arm(
            "sdclr_continued",
            "sdclr",
            bases=("sdclr",),
            start_arm="sdclr",
            start_key="train.init_from",
            continued=True,
            structure=PAPER_STRUCTURE,
        ),
    ]
    return {a.name: a for a in arms}


ARMS: dict[str, Arm] = _arms()
ARM_NAMES = tuple(ARMS)


def load(target: str) -> Any:
    """The attribute a ``"module:attribute"`` entry points at, imported on first use."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)
