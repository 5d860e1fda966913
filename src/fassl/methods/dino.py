"""DINO (Caron et al., ICCV 2021): self-distillation with no labels, over multi-crop.

As facebookresearch/dino ``main_dino.py`` runs it: a student (backbone + DINO head: an
MLP, an l2-normalised bottleneck, a weight-normalised last layer) sees 2 global and
``dino.local_crops`` local crops; a momentum teacher of the same shape sees the 2 global
ones. The loss (``fassl.losses.dino``) is the cross-entropy of the student against the
teacher's centred, sharpened outputs over every pair of different views; the centre is a
running mean of the teacher's outputs (a buffer: a resume continues it exactly), the
teacher's temperature warms up per epoch, its momentum rises to 1 on a cosine schedule,
the last layer stays frozen for the first epoch(s) and every parameter's gradient norm
is clipped.

The network evaluated and exported is the teacher's backbone, as DINO's evaluations load
the ``teacher`` key. The encoder's own projection head is not used: it is frozen and
exported as initialised, so every tool loads the export (as the supervised reference's).
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

from fassl import distributed
from fassl.augment.views import View, ViewSpec
from fassl.config import Config
from fassl.config.sections import DINOConfig
from fassl.data import LongTailData
from fassl.losses import (
    dino_cross_entropy,
    dino_targets,
    target_entropy,
    teacher_temperature,
    update_center,
)
from fassl.methods.base import EpochContext, Method, State, multi_view_forward
from fassl.methods.momentum import EmaPairs, EmaSchedule, frozen_copy
from fassl.models import Encoder

GLOBAL_CROPS = 2  # the teacher's views; DINO's loss pairs every view with each of them
LOCAL_SIDE = 96 / 224  # DINO's local crop side as a share of its global one
# DINO's blur: always on the first global crop, sometimes on the second, half the locals
BLUR_FIRST, BLUR_SECOND, BLUR_LOCAL = 1.0, 0.1, 0.5
# The uniform collapse: from this epoch on, an epoch whose targets' mean entropy is at
# least this share of ln K is named, once (docs/method.md, DINO)
UNIFORM_SHARE, UNIFORM_FROM_EPOCH = 0.99, 3


@torch.no_grad()
def trunc_normal_(
    tensor: torch.Tensor, std: float, a: float = -2.0, b: float = 2.0
) -> torch.Tensor:
    """DINO's truncated normal (``utils.trunc_normal_``, mean 0, cut at [a, b]): the
    inverse CDF of a uniform draw, the same numbers for a seed on every torch version
    (``nn.init.trunc_normal_`` draws by rejection since torch 2.14)."""

    def norm_cdf(x: float) -> float:
        return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0

    low, high = norm_cdf(a / std), norm_cdf(b / std)
    tensor.uniform_(2 * low - 1, 2 * high - 1)
    tensor.erfinv_()
    tensor.mul_(std * math.sqrt(2.0))
    return tensor.clamp_(min=a, max=b)


class WeightNormLinear(nn.Module):
    """``nn.utils.weight_norm(nn.Linear(in_dim, out_dim, bias=False))`` written out: each
    output row's weight is ``g * v / ||v||``. The same parameters (``weight_g`` (out, 1),
    ``weight_v`` (out, in)) and initialisation (``v`` the Linear's, ``g`` 1), without the
    forward hook, which neither deep-copies nor compiles cleanly."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        linear = nn.Linear(in_dim, out_dim, bias=False)  # its initialisation, as DINO's
        self.weight_v = nn.Parameter(linear.weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """DINO's head (``vision_transformer.DINOHead``): ``layers`` linear layers with GELU
    (and BatchNorm with ``use_bn``) down to ``bottleneck_dim``, l2-normalised, then a
    weight-normalised linear layer to ``out_dim`` whose norms stay 1 with
    ``norm_last_layer``. Linear weights are truncated normal (std 0.02), biases 0."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        layers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        layers = max(layers, 1)
        self.mlp: nn.Module
        if layers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            parts: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            for _ in range(layers - 2):
                parts += [*self._norm_act(hidden_dim, use_bn), nn.Linear(hidden_dim, hidden_dim)]
            parts += [*self._norm_act(hidden_dim, use_bn), nn.Linear(hidden_dim, bottleneck_dim)]
            self.mlp = nn.Sequential(*parts)
        self.apply(self._init_weights)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad_(False)

    @staticmethod
    def _norm_act(dim: int, use_bn: bool) -> list[nn.Module]:
        return [nn.BatchNorm1d(dim), nn.GELU()] if use_bn else [nn.GELU()]

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


class DINONetwork(nn.Module):
    """A backbone and a DINO head; ``forward`` returns (features, head outputs), as an
    ``Encoder`` does, so ``multi_view_forward`` runs it one batch per crop size."""

    def __init__(self, backbone: nn.Module, head: DINOHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        return features, self.head(features)


class ParameterEma(EmaPairs):
    """``EmaPairs`` over the parameters only: DINO averages ``parameters()``, and its
    teacher keeps the BatchNorm statistics of its own forward passes (the ones its
    evaluated backbone normalises with), rather than the student's."""

    def _pair(self) -> None:
        super()._pair()
        self._buffers = ([], [])


def dino_view_spec(cfg: DINOConfig, image_size: int) -> ViewSpec:
    """DINO's crops for images of side ``image_size``: 2 global crops of the whole side
    and ``local_crops`` local ones; DINO's per-crop blur and the second crop's
    solarization (``dino.blur``, ``dino.solarize_p``)."""
    local_size = cfg.local_size or max(1, round(image_size * LOCAL_SIDE))
    second = View(blur_p=BLUR_SECOND if cfg.blur else None, solarize_p=cfg.solarize_p)
    if cfg.blur:
        per_view = (View(blur_p=BLUR_FIRST), second, *(View(blur_p=BLUR_LOCAL),) * cfg.local_crops)
    else:
        per_view = (View(), second)
    return ViewSpec(
        global_crops=GLOBAL_CROPS,
        global_scale=(cfg.global_scale_min, 1.0),
        local_crops=cfg.local_crops,
        local_size=local_size if cfg.local_crops else None,
        local_scale=(cfg.local_scale_min, cfg.local_scale_max),
        per_view=per_view,
    )


class DINO(Method):
    name = "dino"
    head = "plain"  # the encoder's own projection head: exported, never trained
    sections = ("dino",)

    center: torch.Tensor
    entropy_sum: torch.Tensor
    student: DINONetwork

    def __init__(self, encoder: Encoder, cfg: DINOConfig, image_size: int = 32) -> None:
        super().__init__(encoder)
        self.cfg = cfg
        encoder.projector.requires_grad_(False)  # not in DINO: no optimizer or DDP tracks it
        self.dino_head = DINOHead(
            int(encoder.backbone.out_dim),
            cfg.out_dim,
            cfg.hidden_dim,
            cfg.bottleneck_dim,
            cfg.head_layers,
            cfg.head_bn,
            cfg.norm_last_layer,
        )
        student = DINONetwork(encoder.backbone, self.dino_head)
        # The student shares the encoder's backbone and the head: registering it again
        # would save every backbone tensor twice, so it is kept as a plain attribute.
        object.__setattr__(self, "student", student)
        self.teacher = frozen_copy(student)  # DINO's teacher starts as the student
        self.ema = EmaSchedule(cfg.ema, cfg.ema_end, "cosine")
        self.ema_pairs = ParameterEma(self.teacher, student)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.epoch = 0
        self.teacher_temp = teacher_temperature(
            0,
            cfg.warmup_teacher_temp,
            cfg.teacher_temp,
            cfg.warmup_teacher_temp_epochs,
            max(cfg.warmup_teacher_temp_epochs, 1),
        )
        self.view_spec = dino_view_spec(cfg, image_size)
        # the epoch's summed target entropy, on the device (updated in place: a compiled
        # step stays one graph), read at most once an epoch; its steps counted on the host
        self.register_buffer("entropy_sum", torch.zeros(()), persistent=False)
        self.entropy_steps = 0
        self._uniform_named = False

    @classmethod
    def from_config(cls, cfg: Config, encoder: Encoder, init: State | None, source: str) -> DINO:
        # the image side until the data is attached (it sets the local crops' own)
        return cls(encoder, cfg.dino, cfg.data.image_size)

    @property
    def backbone(self) -> nn.Module:
        """The teacher's: DINO evaluates the teacher."""
        return self.teacher.backbone

    def attach_data(self, data: LongTailData) -> None:
        """The crops for the data's image side (the local crops' size follows it)."""
        self.view_spec = dino_view_spec(self.cfg, data.image_size)

    def on_epoch_start(self, ctx: EpochContext) -> None:
        self._name_uniform_targets(ctx.epoch)
        self.epoch = ctx.epoch
        c = self.cfg
        self.teacher_temp = teacher_temperature(
            ctx.epoch,
            c.warmup_teacher_temp,
            c.teacher_temp,
            c.warmup_teacher_temp_epochs,
            ctx.num_epochs,
        )

    def forward(self, views: list[torch.Tensor]):  # type: ignore[override]
        if len(views) != self.view_spec.count:
            raise ValueError(f"DINO expects {self.view_spec.count} views, got {len(views)}")
        _, student_out = multi_view_forward(self.student, views)  # one pass per crop size
        with torch.no_grad():
            _, teacher_out = multi_view_forward(self.teacher, views[:GLOBAL_CROPS])
        c = self.cfg
        targets = dino_targets(teacher_out, self.center, self.teacher_temp)
        loss = dino_cross_entropy(student_out, targets, c.student_temp)  # dino_loss, targets once
        entropy = target_entropy(targets)
        self.entropy_sum.add_(entropy)
        self.center.copy_(update_center(self.center, teacher_out, c.center_momentum))
        return loss, {"loss": loss.detach(), "target_entropy": entropy}

    def _name_uniform_targets(self, epoch: int) -> None:
        """Say once, on the main process, when the last epoch's targets were uniform."""
        steps, self.entropy_steps = self.entropy_steps, 0
        if self._uniform_named or epoch < UNIFORM_FROM_EPOCH or not steps:
            self.entropy_sum.zero_()
            return
        share = float(self.entropy_sum) / steps
        self.entropy_sum.zero_()
        if share >= UNIFORM_SHARE:
            self._uniform_named = True
            if distributed.is_main():  # rank 0's own targets: no collective
                print(
                    f"fassl: warning: dino: epoch {epoch}'s teacher targets were uniform "
                    f"(entropy {share:.3f} of ln K): the head has collapsed and the "
                    "backbone learns nothing; try a head with BatchNorm (dino.head_bn=true) "
                    "or the settings of the cifar10_lt_sweep_cpu_dino recipe (docs/method.md, "
                    "DINO)",
                    file=sys.stderr,
                )

    def on_after_backward(self, step: int) -> None:
        if self.cfg.clip_grad > 0:
            clip_gradients(self.student, self.cfg.clip_grad)
        if self.epoch < self.cfg.freeze_last_layer:  # DINO's cancel_gradients_last_layer
            for p in self.dino_head.last_layer.parameters():
                p.grad = None

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.ema_pairs.update(self.ema.at(step, total_steps))
        self.entropy_steps += 1

    def export_state(self) -> State:
        """The teacher's backbone and the encoder's (untrained) projection head."""
        state = {f"backbone.{k}": v for k, v in self.teacher.backbone.state_dict().items()}
        state |= {f"projector.{k}": v for k, v in self.encoder.projector.state_dict().items()}
        return {k: v.detach().clone() for k, v in state.items()}


@torch.no_grad()
def clip_gradients(module: nn.Module, clip: float) -> None:
    """DINO's ``utils.clip_gradients``: each parameter's gradient scaled by
    ``clip / (norm + 1e-6)`` where that is below 1. Multi-tensor, and never read on the
    host (the reference reads each norm)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    scales = [(clip / (n + 1e-6)).clamp(max=1.0) for n in norms]
    torch._foreach_mul_(grads, scales)
