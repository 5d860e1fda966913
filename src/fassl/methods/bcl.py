"""BCL, boosted contrastive learning (Zhou et al., ICML 2022): BCL-I on SimCLR, BCL-D on SDCLR.

Label-free: networks memorise the images of frequent classes first, so an image whose
contrastive loss stays high is likely rare. BCL keeps a momentum average of each image's
loss over epochs, normalises it over the data set into a strength in [0, 1], and
augments the image's views more (more often, and harder) the higher its strength
(``fassl.augment.boost``). The loss itself is the base method's, unweighted. As BCL's
README runs them, BCL-I draws one boost operation a view and BCL-D two
(``reference_num_ops``; ``bcl.num_ops`` overrides).

Where this differs from BCL's code: the strength is computed over the images seen so far
(BCL's first epoch covers all images; the loop here drops the last partial batch, so an
image may first be seen in a later epoch), and the momentum is kept in buffers that
every checkpoint saves, so a resumed run continues exactly.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from fassl import distributed
from fassl.augment.boost import BoostSpec
from fassl.config import Config
from fassl.data import LongTailData
from fassl.losses import nt_xent_per_image
from fassl.methods.base import EpochContext, Method, State, two_view_forward
from fassl.methods.sdclr import SDCLR
from fassl.methods.simclr import SimCLR
from fassl.models import Encoder


@torch.no_grad()
def momentum_loss_update(
    momentum: torch.Tensor,
    seen: torch.Tensor,
    index: torch.Tensor,
    loss: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BCL's momentum loss (Zhou et al., ICML 2022, Sec. 4.1): for each image i of the
    batch, m_i <- beta m_i + (1 - beta) l_i, or m_i <- l_i the first time it is seen.

    Args:
        momentum: (N,) the data set's momentum losses.
        seen: (N,) bool, whether each image has a momentum loss yet.
        index: (n,) the batch's image indices (distinct).
        loss: (n,) their losses this step.
        beta: the momentum, in [0, 1).

    Returns:
        New (momentum, seen); the inputs are not modified.
    """
    loss = loss.detach().to(momentum.dtype)
    previous = momentum[index]
    updated = torch.where(seen[index], beta * previous + (1.0 - beta) * loss, loss)
    return momentum.index_put((index,), updated), seen.index_put(
        (index,), torch.ones_like(index, dtype=torch.bool)
    )


@torch.no_grad()
def boost_strength(momentum: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """BCL's augmentation strength from the momentum losses: standardise over the data set,
    divide by the largest absolute value, map [-1, 1] to [0, 1]:
    s_i = (m_i - mean) / std / max_j |.| / 2 + 1/2 (BCL's ``calculate_momentum_weight``).

    The statistics use the images seen so far (``seen``); unseen images, and every image
    while fewer than two are seen or all losses are equal, get strength 0 (no boost).

    Args:
        momentum: (N,) momentum losses.
        seen: (N,) bool.

    Returns:
        (N,) float32 strengths in [0, 1].
    """
    values = momentum[seen].float()
    out = torch.zeros_like(momentum, dtype=torch.float32)
    if values.numel() < 2:
        return out
    std = values.std()  # unbiased, as torch.std in BCL's code
    if not bool(std > 0):
        return out
    z = (values - values.mean()) / std
    out[seen] = z / z.abs().max() / 2 + 0.5
    return out


class BoostedMemorization(Method):
    """The part of BCL shared by BCL-I and BCL-D: per-image momentum losses in buffers,
    turned into augmentation strengths at every epoch start."""

    needs_index: ClassVar[bool] = True
    momentum: torch.Tensor
    seen: torch.Tensor
    strength: torch.Tensor

    reference_num_ops: ClassVar[int]  # BCL's README: --rand_k of this variant

    @classmethod
    def from_config(
        cls, cfg: Config, encoder: Encoder, init: State | None, source: str
    ) -> BoostedMemorization:
        """The base method (SimCLR's or SDCLR's ``from_config``, next in the MRO) with
        BCL's boost of the variant's number of operations."""
        method = super().from_config(cfg, encoder, init, source)  # type: ignore[misc]
        b = cfg.bcl
        spec = BoostSpec(b.ops, b.num_ops or cls.reference_num_ops, b.max_magnitude, b.magnitude)
        method.init_boost(b.beta, spec)
        return method

    def init_boost(self, beta: float, boost: BoostSpec) -> None:
        self.beta = beta
        self.boost = boost
        # sized for the data set by attach_data; saved with every checkpoint
        self.register_buffer("momentum", torch.zeros(0))
        self.register_buffer("seen", torch.zeros(0, dtype=torch.bool))
        self.register_buffer("strength", torch.zeros(0), persistent=False)

    def attach_data(self, data: LongTailData) -> None:
        n = len(data.pretrain)
        if self.momentum.numel() != n:
            self.momentum = torch.zeros(n, device=self.momentum.device)
            self.seen = torch.zeros(n, dtype=torch.bool, device=self.seen.device)
            self.strength = torch.zeros(n, device=self.strength.device)

    def refresh_strength(self) -> None:
        self.strength = boost_strength(self.momentum, self.seen)

    def view_strength(self, index: torch.Tensor) -> torch.Tensor | None:
        return self.strength[index.to(self.strength.device)]

    def remember(self, index: torch.Tensor, loss: torch.Tensor) -> None:
        """Update the momentum losses of the batch (of the global batch under DDP)."""
        index = distributed.gather_no_grad(index.to(self.momentum.device))
        loss = distributed.gather_no_grad(loss.detach())
        self.momentum, self.seen = momentum_loss_update(
            self.momentum, self.seen, index, loss, self.beta
        )

    def on_epoch_start(self, ctx: EpochContext) -> None:
        super().on_epoch_start(ctx)  # the base method's own (SDCLR re-prunes)
        self.refresh_strength()

    def epoch_state(self) -> State:
        return super().epoch_state() | {"strength": self.strength}

    def load_epoch_state(self, state: State) -> None:
        super().load_epoch_state(state)
        self.strength = state["strength"].to(self.strength.device)

    def boosted_loss(
        self, z1: torch.Tensor, z2: torch.Tensor, index: torch.Tensor, temperature: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """NT-Xent of the pair, its per-image values remembered: (loss, logs)."""
        per_image = nt_xent_per_image(z1, z2, temperature)
        self.remember(index, per_image)
        loss = per_image.mean()
        strength = self.strength[index.to(self.strength.device)].mean()
        return loss, {"loss": loss.detach(), "boost_strength": strength}


class BCLSimCLR(BoostedMemorization, SimCLR):
    """BCL-I: SimCLR whose views are boosted by each image's momentum loss."""

    name = "bcl_i"
    sections = ("simclr", "temperature", "bcl")
    reference_num_ops: ClassVar[int] = 1  # BCL's README: --rand_k 1

    def forward(  # type: ignore[override]
        self, views: list[torch.Tensor], index: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _, (z1, z2) = two_view_forward(self.encoder, views)
        return self.boosted_loss(z1, z2, index, self.temperature)


class BCLSDCLR(BoostedMemorization, SDCLR):
    """BCL-D: SDCLR (dense against pruned branch) whose views are boosted the same way."""

    name = "bcl_d"
    sections = ("sdclr", "temperature", "bcl")
    reference_num_ops: ClassVar[int] = 2  # BCL's README: --rand_k 2

    def forward(  # type: ignore[override]
        self, views: list[torch.Tensor], index: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z1, z2 = self.dense_and_pruned(views)
        return self.boosted_loss(z1, z2, index, self.temperature)
