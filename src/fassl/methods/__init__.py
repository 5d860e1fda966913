"""One small class per method; ``build_method`` makes one from the run's config.

``METHODS``: name -> class, loaded from ``fassl.registry.METHOD_CLASSES`` (where a
method's name is declared, once). Each class builds itself from the config
(``Method.from_config``).
"""

from __future__ import annotations

from torch import nn

from fassl.config import Config
from fassl.methods.base import EpochContext, Method, State
from fassl.models import HEADS, Encoder, build_backbone, head_of_state, projection_head
from fassl.models.state import load_state_checked, sub_state
from fassl.registry import METHOD_CLASSES, load

__all__ = ["METHODS", "EpochContext", "Method", "State", "build_encoder", "build_method"]

# name -> class, from the registry's entries: every class loads with this package
METHODS: dict[str, type[Method]] = {name: load(target) for name, target in METHOD_CLASSES.items()}


def head_kind(cfg: Config, name: str | None = None, init: State | None = None) -> str:
    """The projection head a run builds: ``model.head`` when set; with ``auto``, the head
    of the weights it starts from, else the method's own (``Method.head``)."""
    if cfg.model.head != "auto":
        return cfg.model.head
    if init is not None and any(k.startswith("projector.") for k in init):
        return head_of_state(init)
    return METHODS[name].head if name in METHODS else "bn"


def build_encoder(
    cfg: Config, head: str | None = None, backbone: nn.Module | None = None
) -> Encoder:
    """A fresh encoder of ``cfg.model`` with the projection head ``head`` (one of
    ``fassl.models.HEADS``; default: ``model.head``, ``auto`` meaning ``bn``), over
    ``backbone`` when one is given (a module with ``out_dim``, its feature size)."""
    kind = head or head_kind(cfg)
    if kind not in HEADS:
        raise ValueError(f"projection head must be one of {list(HEADS)}, got {kind!r}")
    if backbone is None:
        m = cfg.model
        backbone = build_backbone(m.arch, m.width, m.cifar_stem, m.kwargs)
    projector = projection_head(kind, backbone.out_dim, cfg.model.proj_hidden, cfg.model.proj_dim)
    return Encoder(backbone, projector)


def build_method(
    cfg: Config,
    name: str,
    init: State | None = None,
    init_source: str = "initial weights",
    backbone: nn.Module | None = None,
) -> Method:
    """The method ``name`` with its encoder, optionally initialised from an exported state.

    ``init`` is what ``Method.export_state`` wrote (``backbone.*``, ``projector.*``,
    ``prototypes``). Stage 2 of FASSL needs prototypes and therefore an ``init``.
    ``backbone``: a module to train instead of ``cfg.model``'s (``build_encoder``).
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: expected one of {list(METHODS)}")
    encoder = build_encoder(cfg, head_kind(cfg, name, init), backbone)
    if init is not None:
        state = {k: v for k, v in init.items() if k != "prototypes"}
        if any(k.startswith("projector.") for k in state):
            load_state_checked(encoder, state, init_source)
        else:  # a backbone alone (a library's weights file): a fresh projection head
            load_state_checked(encoder.backbone, sub_state(state, "backbone"), init_source)
    return METHODS[name].from_config(cfg, encoder, init, init_source)
