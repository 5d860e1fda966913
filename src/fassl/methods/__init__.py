"""One small class per method; ``build_method`` makes one from the run's config.

``METHODS`` is the registry: name -> class. Each class builds itself from the config
(``Method.from_config``); the names are ``fassl.config.METHOD_NAMES``.
"""

from __future__ import annotations

from fassl.config import METHOD_NAMES, Config
from fassl.methods.base import EpochContext, Method, State
from fassl.methods.bcl import BCLSDCLR, BCLSimCLR
from fassl.methods.byol import BYOL
from fassl.methods.fassl import PrototypeLearning, RebalancedBYOL
from fassl.methods.ldam import LDAMDRW
from fassl.methods.sdclr import SDCLR
from fassl.methods.simclr import SimCLR
from fassl.methods.supervised import Supervised
from fassl.methods.swav import SwAV
from fassl.models import HEADS, Encoder, build_backbone, head_of_state, projection_head
from fassl.models.state import load_state_checked

__all__ = ["METHODS", "EpochContext", "Method", "State", "build_encoder", "build_method"]

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        SimCLR,
        SDCLR,
        BYOL,
        SwAV,
        PrototypeLearning,
        RebalancedBYOL,
        Supervised,
        BCLSimCLR,
        BCLSDCLR,
        LDAMDRW,
    )
}
assert tuple(METHODS) == METHOD_NAMES, "fassl.config.METHOD_NAMES must list every method"


def head_kind(cfg: Config, name: str | None = None, init: State | None = None) -> str:
    """The projection head a run builds: ``model.head`` when set; with ``auto``, the head
    of the weights it starts from, else the method's own (``Method.head``)."""
    if cfg.model.head != "auto":
        return cfg.model.head
    if init is not None:
        return head_of_state(init)
    return METHODS[name].head if name in METHODS else "bn"


def build_encoder(cfg: Config, head: str | None = None) -> Encoder:
    """A fresh encoder of ``cfg.model`` with the projection head ``head`` (one of
    ``fassl.models.HEADS``; default: ``model.head``, ``auto`` meaning ``bn``)."""
    kind = head or head_kind(cfg)
    if kind not in HEADS:
        raise ValueError(f"projection head must be one of {list(HEADS)}, got {kind!r}")
    backbone = build_backbone(cfg.model.arch, cfg.model.width, cfg.model.cifar_stem)
    projector = projection_head(kind, backbone.out_dim, cfg.model.proj_hidden, cfg.model.proj_dim)
    return Encoder(backbone, projector)


def build_method(
    cfg: Config, name: str, init: State | None = None, init_source: str = "initial weights"
) -> Method:
    """The method ``name`` with its encoder, optionally initialised from an exported state.

    ``init`` is what ``Method.export_state`` wrote (``backbone.*``, ``projector.*``,
    ``prototypes``). Stage 2 of FASSL needs prototypes and therefore an ``init``.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: expected one of {list(METHODS)}")
    encoder = build_encoder(cfg, head_kind(cfg, name, init))
    if init is not None:
        state = {k: v for k, v in init.items() if k != "prototypes"}
        load_state_checked(encoder, state, init_source)
    return METHODS[name].from_config(cfg, encoder, init, init_source)
