"""FASSL (Lin, Chen, Wang, ICCV 2023 workshops): the two stages after the SDCLR teacher.

Stage 1, ``PrototypeLearning``: the teacher and a prototype matrix P are trained together
with NT-Xent on the image-to-prototype scores h = P z (Eq. 1-2).

Stage 2, ``RebalancedBYOL``: a student (a copy of the teacher plus a predictor) learns
with the normalised-MSE consistency loss, each image weighted by phi (Eq. 3, or a variant
of ``fassl.rebalance``), large for images unlike the frozen prototypes; the teacher
follows by EMA (Eq. 4). With ``rebalance.weight=none`` (phi = 1) stage 2 is BYOL started
from the teacher, the paper's ablation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fassl.config import Config
from fassl.errors import IncompatibleCheckpoint
from fassl.losses import consistency_loss, prototype_contrastive_loss
from fassl.methods.base import EpochContext, ScheduledContrast, State, two_view_forward
from fassl.methods.momentum import EmaSchedule, MomentumTeacher, frozen_copy
from fassl.methods.temperature import TemperatureSchedule
from fassl.models import Encoder, mlp_head
from fassl.models.heads import select_feature
from fassl.prototypes import init_prototypes
from fassl.rebalance import NoWeight, Reweighter, build_reweighter, normalize_weights


def feature_dim(cfg: Config, encoder: Encoder) -> int:
    """The dimension of z under ``prototypes.feature``."""
    if cfg.prototypes.feature == "projection":
        return cfg.model.proj_dim
    return int(encoder.backbone.out_dim)  # type: ignore[arg-type]


class PrototypeLearning(ScheduledContrast):
    """Stage 1: teacher and prototypes trained jointly with L_contra (Eq. 1-2)."""

    name = "fassl_prototypes"
    sections = ("prototypes", "temperature")

    def __init__(
        self,
        encoder: Encoder,
        prototypes: torch.Tensor,
        temperature: float,
        normalize: bool,
        feature: str,
        schedule: TemperatureSchedule | None = None,
    ) -> None:
        super().__init__(encoder, schedule or TemperatureSchedule(temperature))
        self.prototypes = nn.Parameter(prototypes.clone())
        self.normalize, self.feature = normalize, feature

    @classmethod
    def from_config(
        cls, cfg: Config, encoder: Encoder, init: State | None, source: str
    ) -> PrototypeLearning:
        g = torch.Generator().manual_seed(cfg.seed)
        p = cfg.prototypes
        prototypes = init_prototypes(p.num_prototypes, feature_dim(cfg, encoder), g)
        schedule = TemperatureSchedule.from_config(p.temperature, cfg.temperature)
        return cls(encoder, prototypes, p.temperature, p.normalize, p.feature, schedule)

    def forward(self, views: list[torch.Tensor]):  # type: ignore[override]
        feats, proj = two_view_forward(self.encoder, views)
        z1 = select_feature((feats[0], proj[0]), self.feature)
        z2 = select_feature((feats[1], proj[1]), self.feature)
        loss = prototype_contrastive_loss(z1, z2, self.prototypes, self.temperature, self.normalize)
        return loss, {"loss": loss.detach()}

    def export_state(self) -> State:
        state = super().export_state()
        state["prototypes"] = self.prototypes.detach().clone()
        return state


def _stage1_prototypes(cfg: Config, encoder: Encoder, init: State | None, source: str):
    """The frozen P of stage 2, checked against the feature it scores."""
    if init is None or "prototypes" not in init:
        raise IncompatibleCheckpoint(
            f"{source}: stage 2 of FASSL needs a stage-1 checkpoint holding prototypes"
        )
    prototypes = init["prototypes"]
    dim = feature_dim(cfg, encoder)
    if prototypes.shape[1] != dim:
        raise IncompatibleCheckpoint(
            f"{source}: prototypes have dimension {prototypes.shape[1]}, but "
            f"prototypes.feature={cfg.prototypes.feature!r} gives features of dimension {dim}"
        )
    return prototypes


class RebalancedBYOL(MomentumTeacher):
    """Stage 2: the student learns L_reb (Eq. 3); the teacher follows by EMA (Eq. 4).

    ``self.encoder`` is the student (what is evaluated); ``self.teacher`` is its EMA.
    P is a buffer: frozen, saved, never updated. ``self.reweighter`` gives log phi; it is
    fitted at every epoch start: a resume at an epoch's start refits it from the same
    teacher, one inside an epoch restores what was fitted (``epoch_state``).
    """

    name = "fassl_rebalance"
    sections = ("prototypes", "rebalance")

    def __init__(
        self,
        teacher: Encoder,
        predictor: nn.Module,
        prototypes: torch.Tensor,
        reweighter: Reweighter,
        cfg: Config,
    ) -> None:
        student = frozen_copy(teacher)
        for p in student.parameters():
            p.requires_grad_(True)
        r = cfg.rebalance
        ema = EmaSchedule(r.ema, r.ema_end, r.ema_schedule)
        super().__init__(student, frozen_copy(teacher), predictor, ema)  # type: ignore[arg-type]
        self.register_buffer("prototypes", prototypes.detach().clone())
        self.reweighter = reweighter
        if not reweighter.needs_dataset:  # usable before the first epoch start
            reweighter.fit(self.prototypes)
        self.feature = cfg.prototypes.feature
        self.clip_std, self.strength = r.clip_std, r.strength
        self.global_stats, self.weight_view = r.global_stats, r.weight_view

    @classmethod
    def from_config(
        cls, cfg: Config, encoder: Encoder, init: State | None, source: str
    ) -> RebalancedBYOL:
        prototypes = _stage1_prototypes(cfg, encoder, init, source)
        r = cfg.rebalance
        predictor = mlp_head(cfg.model.proj_dim, r.pred_hidden, cfg.model.proj_dim)
        return cls(encoder, predictor, prototypes, build_reweighter(r.weight, r), cfg)

    @property
    def weighted(self) -> bool:
        return not isinstance(self.reweighter, NoWeight)

    def teacher_feature(self, x: torch.Tensor) -> torch.Tensor:
        return select_feature(self.teacher(x), self.feature)

    def on_epoch_start(self, ctx: EpochContext) -> None:
        if not self.weighted:
            return
        feats = ctx.embed(self.teacher_feature).float() if self.reweighter.needs_dataset else None
        # refit every epoch: .to(device) has replaced the prototypes buffer since __init__
        self.reweighter.fit(self.prototypes, feats)

    def epoch_state(self) -> State:
        """The reweighter's fitted tensors (features of the epoch's start, for the weights
        that read every image's)."""
        fitted = vars(self.reweighter).items()
        return {f"reweighter.{k}": v for k, v in fitted if isinstance(v, torch.Tensor)}

    def load_epoch_state(self, state: State) -> None:
        for key, value in state.items():
            name = key.removeprefix("reweighter.")
            setattr(self.reweighter, name, value.to(self.prototypes.device))

    def dataset_log_phi(
        self, embed: Callable[[Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]
    ) -> torch.Tensor | None:
        """log phi of every training image under the current teacher (None for phi = 1)."""
        if not self.weighted:
            return None
        return self.reweighter.log_phi(embed(self.teacher_feature))

    def batch_weights(self, f: tuple[torch.Tensor, ...], t: tuple[torch.Tensor, ...]):
        """phi of this batch from the teacher's outputs of both views, and log scalars."""
        log_phi = self.reweighter.log_phi(select_feature((f[0], t[0]), self.feature))
        if self.weight_view == "mean":
            l2 = self.reweighter.log_phi(select_feature((f[1], t[1]), self.feature))
            log_phi = (log_phi + l2) / 2
        weights = normalize_weights(log_phi, self.clip_std, self.global_stats, self.strength)
        logs = {
            "weight_max": weights.max(),
            "weight_min": weights.min(),
            "log_phi_mean": log_phi.mean(),
        }
        return weights, logs

    def forward(self, views: list[torch.Tensor]):  # type: ignore[override]
        (p1, p2), ((f1, f2), (t1, t2)) = self.predict(views)
        logs: dict[str, torch.Tensor] = {}
        weights = None
        if self.weighted:
            with torch.no_grad():
                weights, logs = self.batch_weights((f1, f2), (t1, t2))
        loss = consistency_loss(p1, t2, weights) + consistency_loss(p2, t1, weights)
        logs["loss"] = loss.detach()
        return loss, logs

    def export_state(self) -> State:
        state = super().export_state()
        state["prototypes"] = self.prototypes.detach().clone()
        return state
