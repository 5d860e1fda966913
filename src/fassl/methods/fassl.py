"""FASSL (Lin, Chen, Wang, ICCV 2023 workshops): the two stages after the SDCLR teacher.

Stage 1, ``PrototypeLearning``: the teacher and a prototype matrix P are trained together
with NT-Xent on the image-to-prototype scores h = P z (Eq. 1-2).

Stage 2, ``RebalancedBYOL``: a student (a copy of the teacher plus a predictor) learns
with the normalised-MSE consistency loss, each image weighted by phi (Eq. 3), large for
images unlike the frozen prototypes; the teacher follows by EMA (Eq. 4). With
``weight="none"`` (phi = 1) stage 2 is BYOL started from the teacher, the paper's ablation.
"""

from __future__ import annotations

import torch
from torch import nn

from fassl.losses import (
    consistency_loss,
    ema_update,
    log_rebalance_weight,
    log_weight_cluster_size,
    log_weight_knn,
    log_weight_softmax_density,
    normalize_weights,
    prototype_contrastive_loss,
)
from fassl.methods.base import EpochContext, Method, two_view_forward
from fassl.methods.byol import ema_momentum, frozen_copy
from fassl.models import Encoder

WEIGHTS = ("paper", "paper_normalized", "softmax_density", "cluster_size", "knn", "none")


def select_feature(outputs: tuple[torch.Tensor, torch.Tensor], feature: str) -> torch.Tensor:
    """The z of Eq. 1 and 3: the projection head's output or the backbone's feature."""
    backbone_out, projection = outputs
    return projection if feature == "projection" else backbone_out


def nearest_prototype_counts(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Images per prototype when every image joins its most similar (cosine) prototype."""
    sim = (
        nn.functional.normalize(features.float(), dim=1)
        @ nn.functional.normalize(prototypes.float(), dim=1).T
    )
    return torch.bincount(sim.argmax(dim=1), minlength=prototypes.shape[0])


def log_weight(
    weight: str,
    z: torch.Tensor,
    prototypes: torch.Tensor,
    *,
    density_temperature: float = 0.1,
    cluster_sizes: torch.Tensor | None = None,
    bank: torch.Tensor | None = None,
    knn_k: int = 10,
) -> torch.Tensor:
    """log phi for each row of ``z`` under the chosen weight (larger = rarer).

    ``paper`` is Eq. 3 as written; the others are label-free alternatives compared in
    docs/RESULTS.md. ``cluster_size`` needs the per-prototype counts of the dataset,
    ``knn`` a bank of dataset features.
    """
    if weight == "paper":
        return log_rebalance_weight(z, prototypes, normalize=False)
    if weight == "paper_normalized":
        return log_rebalance_weight(z, prototypes, normalize=True)
    if weight == "softmax_density":
        return log_weight_softmax_density(z, prototypes, density_temperature)
    if weight == "cluster_size":
        if cluster_sizes is None:
            raise ValueError("weight 'cluster_size' needs the prototype cluster sizes")
        return log_weight_cluster_size(z, prototypes, cluster_sizes)
    if weight == "knn":
        if bank is None:
            raise ValueError("weight 'knn' needs a feature bank")
        return log_weight_knn(z, bank, knn_k)
    if weight == "none":
        return torch.zeros(z.shape[0], device=z.device)
    raise ValueError(f"unknown rebalance.weight {weight!r}: expected one of {list(WEIGHTS)}")


class PrototypeLearning(Method):
    """Stage 1: teacher and prototypes trained jointly with L_contra (Eq. 1-2)."""

    name = "fassl_prototypes"

    def __init__(
        self,
        encoder: Encoder,
        prototypes: torch.Tensor,
        temperature: float,
        normalize: bool,
        feature: str,
    ) -> None:
        super().__init__(encoder)
        self.prototypes = nn.Parameter(prototypes.clone())
        self.temperature, self.normalize, self.feature = temperature, normalize, feature

    def forward(self, view1: torch.Tensor, view2: torch.Tensor):  # type: ignore[override]
        feats, proj = two_view_forward(self.encoder, view1, view2)
        z1 = select_feature((feats[0], proj[0]), self.feature)
        z2 = select_feature((feats[1], proj[1]), self.feature)
        loss = prototype_contrastive_loss(z1, z2, self.prototypes, self.temperature, self.normalize)
        return loss, {"loss": loss.detach()}

    def export_state(self) -> dict[str, torch.Tensor]:
        state = super().export_state()
        state["prototypes"] = self.prototypes.detach().clone()
        return state


class RebalancedBYOL(Method):
    """Stage 2: the student learns L_reb (Eq. 3); the teacher follows by EMA (Eq. 4).

    ``self.encoder`` is the student (what is evaluated); ``self.teacher`` is its EMA.
    P is a buffer: frozen, saved, never updated.
    """

    name = "fassl_rebalance"

    def __init__(
        self,
        teacher: Encoder,
        predictor: nn.Module,
        prototypes: torch.Tensor,
        *,
        weight: str,
        feature: str,
        clip_std: float,
        strength: float,
        global_stats: bool,
        weight_view: str,
        density_temperature: float,
        knn_k: int,
        ema: float,
        ema_end: float,
        ema_schedule: str,
    ) -> None:
        student = frozen_copy(teacher)
        for p in student.parameters():
            p.requires_grad_(True)
        super().__init__(student)  # type: ignore[arg-type]
        self.teacher = frozen_copy(teacher)
        self.predictor = predictor
        self.register_buffer("prototypes", prototypes.detach().clone())
        self.weight, self.feature = weight, feature
        self.clip_std, self.strength = clip_std, strength
        self.global_stats, self.weight_view = global_stats, weight_view
        self.density_temperature, self.knn_k = density_temperature, knn_k
        self.ema, self.ema_end, self.ema_schedule = ema, ema_end, ema_schedule
        # Dataset-level statistics some weights need, recomputed at every epoch start
        # (so not saved: a resumed epoch recomputes them from the same teacher).
        self.register_buffer("cluster_sizes", torch.ones(prototypes.shape[0]), persistent=False)
        self.register_buffer("bank", torch.zeros(0, prototypes.shape[1]), persistent=False)

    def teacher_feature(self, x: torch.Tensor) -> torch.Tensor:
        return select_feature(self.teacher(x), self.feature)

    def on_epoch_start(self, ctx: EpochContext) -> None:
        if self.weight not in ("cluster_size", "knn"):
            return
        feats = ctx.embed(self.teacher_feature).float()
        if self.weight == "cluster_size":
            self.cluster_sizes = nearest_prototype_counts(feats, self.prototypes).float()
        else:
            self.bank = nn.functional.normalize(feats, dim=1)

    def log_phi(self, z: torch.Tensor) -> torch.Tensor:
        return log_weight(
            self.weight,
            z,
            self.prototypes,
            density_temperature=self.density_temperature,
            cluster_sizes=self.cluster_sizes,
            bank=self.bank,
            knn_k=self.knn_k,
        )

    def forward(self, view1: torch.Tensor, view2: torch.Tensor):  # type: ignore[override]
        _, (s1, s2) = two_view_forward(self.encoder, view1, view2)
        p1, p2 = self.predictor(torch.cat([s1, s2])).chunk(2)
        with torch.no_grad():
            (f1, f2), (t1, t2) = two_view_forward(self.teacher, view1, view2)
        logs: dict[str, torch.Tensor] = {}
        weights = None
        if self.weight != "none":
            with torch.no_grad():
                l1 = self.log_phi(select_feature((f1, t1), self.feature))
                l2 = self.log_phi(select_feature((f2, t2), self.feature))
                log_phi = l1 if self.weight_view == "first" else (l1 + l2) / 2
                weights = normalize_weights(
                    log_phi, self.clip_std, self.global_stats, self.strength
                )
            logs["weight_max"] = weights.max()
            logs["weight_min"] = weights.min()
            logs["log_phi_mean"] = log_phi.mean()
        loss = consistency_loss(p1, t2, weights) + consistency_loss(p2, t1, weights)
        logs["loss"] = loss.detach()
        return loss, logs

    def on_step_end(self, step: int, total_steps: int) -> None:
        tau = ema_momentum(self.ema_schedule, self.ema, self.ema_end, step, total_steps)
        ema_update(self.teacher, self.encoder, tau)

    def export_state(self) -> dict[str, torch.Tensor]:
        state = super().export_state()
        state["prototypes"] = self.prototypes.detach().clone()
        return state
