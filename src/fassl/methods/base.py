"""What every method is: modules it owns, the views it takes, and how they become a loss.

The training loop (``fassl.train.loop``) knows nothing else about a method: it makes the
views the method declares (``Method.view_spec``), calls ``forward(views, *extras)`` for
the loss and the hooks around the optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

import torch
from torch import nn

from fassl.augment.boost import BoostSpec
from fassl.augment.views import TWO_VIEWS, ViewSpec
from fassl.config import Config
from fassl.data import LongTailData
from fassl.errors import ConfigError
from fassl.methods.temperature import ScheduledTemperature, TemperatureSchedule
from fassl.models import Encoder

# What ``Method.export_state`` writes and later stages read: name -> tensor.
State: TypeAlias = dict[str, torch.Tensor]


@dataclass
class EpochContext:
    """What a method may look at when an epoch starts."""

    epoch: int
    num_epochs: int
    # Features of every training image (no augmentation) through the given function,
    # computed in eval mode without gradients; rows in dataset order, on the device.
    embed: Callable[[Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]


class Method(nn.Module):
    """Base class: a self-supervised objective over augmented views of each image.

    ``forward`` receives the views ``view_spec`` declares, as a list in its order (global
    crops, then local crops), then the extras (labels, image indices). Views of different
    sizes cannot share a batch: run one forward per size (``multi_view_forward``).
    """

    name = "method"
    # The config sections holding this method's own settings: a rerun with any of their
    # keys changed is a conflict (fassl.runs.settings), a sweep over them retrains it.
    sections: ClassVar[tuple[str, ...]] = ()
    # The supervised references read the batch's labels, BCL the batch's image indices
    # (further ``forward`` arguments after the views, labels first); the others see the
    # views only.
    needs_labels: ClassVar[bool] = False
    needs_index: ClassVar[bool] = False
    # The projection head of the method's reference code (``model.head=auto``): a BatchNorm
    # on the output for the contrastive methods, a linear output for BYOL and SwAV.
    head: ClassVar[str] = "bn"
    # Extra per-image augmentation on top of the common one (BCL): the operation set and
    # how many are drawn a view; ``view_strength`` gives each image's strength.
    boost: BoostSpec | None = None
    # The views ``forward`` takes (``fassl.augment.views.ViewSpec``): by default two
    # identical global views of ``augment``; multi-crop and asymmetric methods declare
    # theirs (an instance may set its own from its config, as BCL sets ``boost``).
    view_spec: ViewSpec = TWO_VIEWS

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    @classmethod
    def from_config(cls, cfg: Config, encoder: Encoder, init: State | None, source: str) -> Method:
        """The method around ``encoder`` with its settings from ``cfg``; ``init`` is the
        exported state the encoder was initialised from (``source`` names it)."""
        raise NotImplementedError

    @property
    def backbone(self) -> nn.Module:
        """The network whose features are evaluated."""
        return self.encoder.backbone

    def forward(  # type: ignore[override]
        self, views: list[torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of the views ``view_spec`` declares, and detached scalars to log."""
        raise NotImplementedError

    def attach_data(self, data: LongTailData) -> None:
        """Hook before training starts, before the optimizer is built (the supervised
        reference sizes its classifier for the data's classes here)."""

    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Hook before an epoch's first step (SDCLR re-prunes here)."""

    def on_step_start(self, step: int, total_steps: int) -> None:
        """Hook before a step's forward (a scheduled temperature is set here)."""

    def view_strength(self, index: torch.Tensor) -> torch.Tensor | None:
        """(n,) strength in [0, 1] of the extra augmentation (``boost``) of the images
        ``index``; None = none."""
        return None

    def on_after_backward(self, step: int) -> None:
        """Hook between backward and the optimizer step (SwAV freezes prototypes here)."""

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Hook after the optimizer step (EMA teachers follow here)."""

    def dataset_log_phi(
        self, embed: Callable[[Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]
    ) -> torch.Tensor | None:
        """log phi of every training image, for methods that re-weight images (stage 2
        of FASSL); None for the others."""
        return None

    def upgrade_state(self, state: State) -> State:
        """A training checkpoint's state in this version's key names (for resume)."""
        return state

    def epoch_state(self) -> State:
        """What ``on_epoch_start`` derived that ``state_dict`` leaves out (non-persistent
        buffers, fitted weights), for a checkpoint written inside an epoch: the weights
        have moved since the epoch began, so a resume restores these rather than derive
        them again. A method whose epoch-start state is all persistent returns nothing."""
        return {}

    def load_epoch_state(self, state: State) -> None:
        """Restore ``epoch_state``'s tensors (a resume inside an epoch)."""

    def export_state(self) -> State:
        """What later stages and evaluation need: ``backbone.*``, ``projector.*`` and
        for prototype methods ``prototypes``; plain BatchNorm keys."""
        return {k: v.detach().clone() for k, v in self.encoder.state_dict().items()}


def multi_view_forward(
    encoder: nn.Module, views: Sequence[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run the views through ``encoder``, one batch per run of same-size views (a batch
    needs one size: DINO's multi-crop wrapper does the same), and split the outputs.

    Returns (features, projections), one tensor per view in the order given.
    """
    feats: list[torch.Tensor] = []
    proj: list[torch.Tensor] = []
    start = 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[1:] == views[start].shape[1:]:
            end += 1
        f, p = encoder(torch.cat(list(views[start:end])))
        sizes = [v.shape[0] for v in views[start:end]]
        feats += f.split(sizes)
        proj += p.split(sizes)
        start = end
    return feats, proj


def two_view_forward(
    encoder: nn.Module, views: Sequence[torch.Tensor]
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Run both views as one batch (one pass is faster than two) and split the outputs.

    Returns ((features1, features2), (projections1, projections2)).
    """
    view1, view2 = pair(views)
    n = view1.shape[0]
    feats, proj = encoder(torch.cat([view1, view2]))
    return (feats[:n], feats[n:]), (proj[:n], proj[n:])


def pair(views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The two views of a two-view method; a clear error for any other number."""
    if len(views) != 2:
        raise ValueError(f"expected 2 views (the default view_spec), got {len(views)}")
    return views[0], views[1]


class ScheduledContrast(Method):
    """A contrastive method whose temperature may follow ``temperature.schedule``."""

    def __init__(self, encoder: Encoder, schedule: TemperatureSchedule) -> None:
        super().__init__(encoder)
        self.tau = ScheduledTemperature(schedule)

    @property
    def temperature(self) -> float | torch.Tensor:
        """The temperature of this step: a float when fixed, a 0-d tensor when scheduled."""
        return self.tau.value()

    def on_epoch_start(self, ctx: EpochContext) -> None:
        self.tau.set_epochs(ctx.num_epochs)

    def on_step_start(self, step: int, total_steps: int) -> None:
        self.tau.step(step, total_steps)


def training_labels(method: Method, data: LongTailData) -> torch.Tensor | None:
    """The pre-training labels for a method that sets ``needs_labels``; None otherwise.

    Raises ConfigError when the pre-training set has no labels: a supervised reference
    cannot be trained on an unlabeled collection.
    """
    if not method.needs_labels:
        return None
    labels = data.pretrain.labels
    if not data.labeled or len(labels) == 0 or bool((labels < 0).any()):
        raise ConfigError(
            f"method {method.name!r} trains on the labels of the pre-training set, but "
            f"{data.name!r} has none (data.labeled=false or unknown labels): use a labeled "
            "dataset or a self-supervised method"
        )
    return labels
