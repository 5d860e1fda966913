"""GH, Geometric Harmonization (Zhou et al., NeurIPS 2023): ``simclr_gh`` on SimCLR,
``sdclr_gh`` on SDCLR.

Label-free: in a long-tailed collection the frequent classes take most of the embedding
space. GH fixes K geometrically uniform target directions (a simplex, ``simplex_targets``)
and, after a warm-up of the base method, adds a loss that pulls each image's scores
against them towards Sinkhorn labels under a prior pi: the share of images whose
momentum-averaged score is highest on each target. A target that many images favour
gets a larger share of the labels' mass instead of being split further, so frequent
classes stop expanding at the rare ones' expense (``fassl.losses.gh``).

As GH's ``train_cifar.py`` runs it: view 1's scores (the dense branch's, for SDCLR)
enter each image's momentum, m_i <- beta m_i + (1 - beta) s_i (the first time m_i = s_i),
beta ``gh.warmup_beta`` (0.9) during the warm-up, ``gh.beta`` (0.999) after; pi is
re-estimated after every step of the epoch that ends the warm-up and of every
``gh.refresh``-th epoch (the reference recomputes it inside its step loop in those
epochs); GH's weight ramps linearly to ``gh.weight`` over ``gh.ramp`` of the run. The
epochs are shares of the run (docs/method.md, "Geometric Harmonization").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from fassl import distributed
from fassl.config import Config
from fassl.data import LongTailData
from fassl.errors import ConfigError
from fassl.losses import gh_loss, gh_scores, nt_xent, simplex_targets, target_prior
from fassl.methods.base import EpochContext, Method, State, two_view_forward
from fassl.methods.sdclr import SDCLR
from fassl.methods.simclr import SimCLR
from fassl.models import Encoder

REFERENCE_TARGETS = 100  # GH's --target_dim on CIFAR-100-LT, ImageNet-LT and Places-LT


@torch.no_grad()
def momentum_score_update(
    momentum: torch.Tensor,
    seen: torch.Tensor,
    index: torch.Tensor,
    scores: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GH's momentum scores (``logit_momentum`` of its ``train_cifar.py``): for each image
    i of the batch, m_i <- beta m_i + (1 - beta) s_i, or m_i <- s_i the first time it is
    seen.

    Args:
        momentum: (N, K) the data set's momentum scores.
        seen: (N,) bool, whether each image has a momentum score yet.
        index: (n,) the batch's image indices (distinct).
        scores: (n, K) their scores this step.
        beta: the momentum, in [0, 1).

    Returns:
        New (momentum, seen); the inputs are not modified.
    """
    scores = scores.detach().to(momentum.dtype)
    previous = momentum[index]
    first = ~seen[index].unsqueeze(1)
    updated = torch.where(first, scores, beta * previous + (1.0 - beta) * scores)
    return momentum.index_put((index,), updated), seen.index_put(
        (index,), torch.ones_like(index, dtype=torch.bool)
    )


@dataclass(frozen=True)
class GHSettings:
    """GH's settings (the ``gh`` config section); ``targets`` 0 = the reference's K."""

    targets: int = 0
    target_seed: int = 0
    gamma: float = 0.1
    epsilon: float = 0.05
    iterations: int = 300
    weight: float = 1.0
    warmup: float = 0.5
    ramp: float = 0.01
    refresh: float = 0.02
    beta: float = 0.999
    warmup_beta: float = 0.9

    @classmethod
    def from_config(cls, cfg: Config) -> GHSettings:
        g = cfg.gh
        return cls(
            g.targets,
            g.target_seed,
            g.gamma,
            g.epsilon,
            g.iterations,
            g.weight,
            g.warmup,
            g.ramp,
            g.refresh,
            g.beta,
            g.warmup_beta,
        )


def resolve_targets(targets: int, dim: int) -> int:
    """K from ``gh.targets`` for projections of ``dim`` dimensions: 0 = the reference's 100,
    capped at ``dim``; ConfigError for a K the simplex construction cannot make."""
    if targets == 0:
        targets = min(REFERENCE_TARGETS, dim)
    if not 2 <= targets <= dim:
        raise ConfigError(
            f"config key 'gh.targets' must be 0 (auto) or in [2, model.proj_dim={dim}], got "
            f"{targets}: a simplex of K target directions needs K <= the projection's dimension"
        )
    return targets


@dataclass(frozen=True)
class GHEpoch:
    """What an epoch of GH does, from its 0-based index and the run's length."""

    active: bool  # GH's loss is on (the warm-up is over)
    weight: float  # its weight this epoch
    beta: float  # the scores' momentum this epoch
    refresh: bool  # pi is re-estimated after every step


def gh_epoch(s: GHSettings, epoch: int, num_epochs: int) -> GHEpoch:
    """GH's schedule of ``train_cifar.py`` with its epochs as shares of the run: with W
    warm-up epochs, R ramp epochs and P epochs between refreshes, epoch e (0-based) has
    GH on for e >= W at weight ``weight`` min(1, (e + 1 - W) / R), momentum ``beta`` from
    e >= W (``warmup_beta`` before), and re-estimates pi when e + 1 == W or when
    (e + 1) % P == 0 and e + 1 >= W. Shares round to whole epochs (P at least 1)."""
    warm = _epochs(s.warmup, num_epochs)
    ramp = _epochs(s.ramp, num_epochs)
    period = max(1, _epochs(s.refresh, num_epochs))
    active = epoch >= warm
    weight = s.weight * min(1.0, (epoch + 1 - warm) / max(ramp, 1)) if active else 0.0
    done = epoch + 1
    refresh = done >= warm and (done == warm or done % period == 0)
    return GHEpoch(active, weight, s.beta if active else s.warmup_beta, refresh)


def _epochs(share: float, num_epochs: int) -> int:
    return math.floor(share * num_epochs + 0.5)


class GeometricHarmonization(Method):
    """The part of GH shared by SimCLR and SDCLR: the targets, the momentum scores, the
    prior and the schedule, added to the base method's contrastive loss."""

    needs_index: ClassVar[bool] = True
    targets: torch.Tensor
    prior: torch.Tensor
    momentum: torch.Tensor
    seen: torch.Tensor
    gh_weight: torch.Tensor

    @classmethod
    def from_config(
        cls, cfg: Config, encoder: Encoder, init: State | None, source: str
    ) -> GeometricHarmonization:
        """The base method (SimCLR's or SDCLR's ``from_config``, next in the MRO) with GH's
        settings; the targets live in the projection's space (``model.proj_dim``)."""
        method = super().from_config(cfg, encoder, init, source)  # type: ignore[misc]
        method.init_gh(GHSettings.from_config(cfg), cfg.model.proj_dim)
        return method

    def init_gh(self, settings: GHSettings, dim: int) -> None:
        self.gh = settings
        k = resolve_targets(settings.targets, dim)
        targets = simplex_targets(k, dim, settings.target_seed).float()
        # all saved with every checkpoint: a resumed run continues exactly
        self.register_buffer("targets", targets)
        self.register_buffer("prior", torch.full((k,), 1.0 / k))  # uniform until estimated
        self.register_buffer("momentum", torch.zeros(0, k))  # sized by attach_data
        self.register_buffer("seen", torch.zeros(0, dtype=torch.bool))
        # derived from the epoch number alone (on_epoch_start), so a resume derives it
        # again; a tensor so that a compiled step does not recompile as it ramps
        self.register_buffer("gh_weight", torch.zeros(()), persistent=False)
        self.epoch_plan = GHEpoch(False, 0.0, settings.warmup_beta, False)

    def attach_data(self, data: LongTailData) -> None:
        super().attach_data(data)
        n = len(data.pretrain)
        if self.momentum.shape[0] != n:
            k = self.targets.shape[0]
            self.momentum = torch.zeros(n, k, device=self.momentum.device)
            self.seen = torch.zeros(n, dtype=torch.bool, device=self.seen.device)

    def on_epoch_start(self, ctx: EpochContext) -> None:
        super().on_epoch_start(ctx)  # the base method's own (SDCLR re-prunes)
        self.epoch_plan = gh_epoch(self.gh, ctx.epoch, ctx.num_epochs)
        self.gh_weight.fill_(self.epoch_plan.weight)

    def remember(self, index: torch.Tensor, scores: torch.Tensor) -> None:
        """Update the momentum scores of the batch (of the global batch under DDP: every
        rank holds the same momenta), then pi in a refresh epoch."""
        index = distributed.gather_no_grad(index.to(self.momentum.device))
        scores = distributed.gather_no_grad(scores.detach())
        self.momentum, self.seen = momentum_score_update(
            self.momentum, self.seen, index, scores, self.epoch_plan.beta
        )
        if self.epoch_plan.refresh:
            self.prior = target_prior(self.momentum, self.seen)

    def harmonized_loss(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        index: torch.Tensor,
        temperature: float | torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The base method's NT-Xent of the pair plus GH's weighted loss once the warm-up
        is over; view 1's scores are remembered. Returns (loss, logs)."""
        contrastive = nt_xent(z1, z2, temperature)
        s1 = gh_scores(z1, self.targets)
        if self.epoch_plan.active:
            s2 = gh_scores(z2, self.targets)
            g = self.gh
            harmony = gh_loss(s1, s2, self.prior, g.gamma, g.epsilon, g.iterations)
            loss = contrastive + self.gh_weight * harmony
        else:
            harmony = torch.zeros((), device=contrastive.device)
            loss = contrastive
        self.remember(index, s1)
        return loss, {
            "loss": loss.detach(),
            "loss_cl": contrastive.detach(),
            "loss_gh": harmony.detach(),
            "gh_weight": self.gh_weight.detach().clone(),
        }


class GHSimCLR(GeometricHarmonization, SimCLR):
    """SimCLR + GH: NT-Xent of two views plus GH's loss on their target scores."""

    name = "simclr_gh"
    sections = ("simclr", "temperature", "gh")

    def forward(  # type: ignore[override]
        self, views: list[torch.Tensor], index: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _, (z1, z2) = two_view_forward(self.encoder, views)
        return self.harmonized_loss(z1, z2, index, self.temperature)


class GHSDCLR(GeometricHarmonization, SDCLR):
    """SDCLR + GH: NT-Xent of the dense branch (view 1) against the pruned one (view 2)
    plus GH's loss on their target scores, with gradients through both branches (the sum
    of the reference's two backward passes)."""

    name = "sdclr_gh"
    sections = ("sdclr", "temperature", "gh")

    def forward(  # type: ignore[override]
        self, views: list[torch.Tensor], index: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z1, z2 = self.dense_and_pruned(views)
        return self.harmonized_loss(z1, z2, index, self.temperature)
