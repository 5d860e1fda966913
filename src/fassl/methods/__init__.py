"""One small class per method; ``build_method`` makes one from the run's config."""

from __future__ import annotations

import torch

from fassl.config import Config
from fassl.methods.base import EpochContext, Method
from fassl.methods.byol import BYOL
from fassl.methods.fassl import PrototypeLearning, RebalancedBYOL
from fassl.methods.sdclr import SDCLR
from fassl.methods.simclr import SimCLR
from fassl.methods.swav import SwAV
from fassl.models import Encoder, build_backbone, init_prototypes, mlp_head
from fassl.models.state import IncompatibleCheckpoint, load_state_checked

__all__ = ["EpochContext", "Method", "build_encoder", "build_method"]


def build_encoder(cfg: Config) -> Encoder:
    backbone = build_backbone(cfg.model.arch, cfg.model.width, cfg.model.cifar_stem)
    projector = mlp_head(backbone.out_dim, cfg.model.proj_hidden, cfg.model.proj_dim)
    return Encoder(backbone, projector)


def _encoder_from(cfg: Config, init: dict[str, torch.Tensor] | None, source: str) -> Encoder:
    encoder = build_encoder(cfg)
    if init is not None:
        state = {k: v for k, v in init.items() if k != "prototypes"}
        load_state_checked(encoder, state, source)
    return encoder


def build_method(
    cfg: Config,
    name: str,
    init: dict[str, torch.Tensor] | None = None,
    init_source: str = "initial weights",
) -> Method:
    """The method ``name`` with its encoder, optionally initialised from an exported state.

    ``init`` is what ``Method.export_state`` wrote (``backbone.*``, ``projector.*``,
    ``prototypes``). Stage 2 of FASSL needs prototypes and therefore an ``init``.
    """
    encoder = _encoder_from(cfg, init, init_source)
    dim = cfg.model.proj_dim if cfg.prototypes.feature == "projection" else encoder.backbone.out_dim
    if name == "simclr":
        return SimCLR(encoder, cfg.simclr.temperature)
    if name == "sdclr":
        return SDCLR(encoder, cfg.sdclr.temperature, cfg.sdclr.prune_ratio)
    if name == "byol":
        b = cfg.byol
        predictor = mlp_head(cfg.model.proj_dim, b.pred_hidden, cfg.model.proj_dim)
        return BYOL(encoder, predictor, b.ema, b.ema_end, b.ema_schedule)
    if name == "swav":
        s = cfg.swav
        return SwAV(
            encoder,
            cfg.model.proj_dim,
            s.num_prototypes,
            s.temperature,
            s.epsilon,
            s.sinkhorn_iters,
            s.queue_length,
            s.queue_start_epoch,
            s.freeze_prototypes_steps,
        )
    if name == "fassl_prototypes":
        g = torch.Generator().manual_seed(cfg.seed)
        prototypes = init_prototypes(cfg.prototypes.num_prototypes, dim, g)
        p = cfg.prototypes
        return PrototypeLearning(encoder, prototypes, p.temperature, p.normalize, p.feature)
    if name == "fassl_rebalance":
        if init is None or "prototypes" not in init:
            raise IncompatibleCheckpoint(
                f"{init_source}: stage 2 of FASSL needs a stage-1 checkpoint holding prototypes"
            )
        prototypes = init["prototypes"]
        if prototypes.shape[1] != dim:
            raise IncompatibleCheckpoint(
                f"{init_source}: prototypes have dimension {prototypes.shape[1]}, but "
                f"prototypes.feature={cfg.prototypes.feature!r} gives features of dimension {dim}"
            )
        r = cfg.rebalance
        predictor = mlp_head(cfg.model.proj_dim, r.pred_hidden, cfg.model.proj_dim)
        return RebalancedBYOL(
            encoder,
            predictor,
            prototypes,
            weight=r.weight,
            feature=cfg.prototypes.feature,
            clip_std=r.clip_std,
            strength=r.strength,
            global_stats=r.global_stats,
            weight_view=r.weight_view,
            density_temperature=r.density_temperature,
            knn_k=r.knn_k,
            ema=r.ema,
            ema_end=r.ema_end,
            ema_schedule=r.ema_schedule,
        )
    raise ValueError(f"unknown method {name!r}")
