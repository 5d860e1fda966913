"""Loss functions of FASSL and its baselines (SimCLR, SDCLR, BYOL, SwAV, BCL, LDAM-DRW).

Every function is pure: no module state. Inputs are cast to float32 and autocast is
switched off inside (``fassl.float32.float32_only``: autocast would run the matmuls in
bf16 again), so callers running under bf16 autocast get float32 losses, softmaxes and
weights.
Equation numbers refer to the FASSL paper (Lin, Chen, Wang, "Frequency-Aware
Self-Supervised Long-Tailed Learning", ICCV 2023 workshops).

Distributed training: ``nt_xent`` (and so ``prototype_contrastive_loss``) uses the
negatives of the global batch; ``sinkhorn`` can use global batch statistics (as can
stage 2's ``fassl.rebalance.normalize_weights``). All of them assume every rank holds
the same local batch size (``all_gather`` needs equal shapes). In a single process they
reduce to the usual single-device formulas.
"""

from __future__ import annotations

from fassl.losses.byol import byol_loss, consistency_loss
from fassl.losses.contrastive import (
    nt_xent,
    nt_xent_per_image,
    prototype_contrastive_loss,
    prototype_scores,
)
from fassl.losses.dino import (
    dino_cross_entropy,
    dino_loss,
    dino_targets,
    target_entropy,
    teacher_temperature,
    update_center,
)
from fassl.losses.gh import (
    gh_loss,
    gh_scores,
    gh_sinkhorn,
    simplex_etf,
    simplex_targets,
    target_prior,
)
from fassl.losses.ldam import drw_class_weights, ldam_loss, ldam_margins
from fassl.losses.swav import sinkhorn, swav_loss, swav_multicrop_loss

__all__ = [
    "byol_loss",
    "consistency_loss",
    "dino_cross_entropy",
    "dino_loss",
    "dino_targets",
    "drw_class_weights",
    "gh_loss",
    "gh_scores",
    "gh_sinkhorn",
    "ldam_loss",
    "ldam_margins",
    "nt_xent",
    "nt_xent_per_image",
    "prototype_contrastive_loss",
    "prototype_scores",
    "simplex_etf",
    "simplex_targets",
    "sinkhorn",
    "swav_loss",
    "swav_multicrop_loss",
    "target_entropy",
    "target_prior",
    "teacher_temperature",
    "update_center",
]
