"""Ranges and paths of the config keys, checked before any work starts.

A type says a key is an int; only a range says that ``optim.epochs=-1`` or
``data.few_shot_fraction=0`` cannot train. Every numeric key with a meaningful range is
listed here once, so a wrong value fails in ``load_config`` naming the key, instead of as
a ZeroDivisionError or an empty tensor minutes into a run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

# rule name -> (test, wording)
_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    ">=0": (lambda v: v >= 0, "must be >= 0"),
    ">0": (lambda v: v > 0, "must be > 0"),
    ">=1": (lambda v: v >= 1, "must be >= 1"),
    ">=2": (lambda v: v >= 2, "must be >= 2 (contrastive losses need two images a batch)"),
    ">=8": (lambda v: v >= 8, "must be >= 8 (the network downsamples the image 8 times)"),
    "(0,1]": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "[0,1]": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "[0,1)": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "[0,0.5]": (lambda v: 0 <= v <= 0.5, "must be in [0, 0.5]"),
}

# Every optimizer section: the single-method run's and each pipeline stage's.
OPTIM_SECTIONS = ("optim", "pipeline.teacher", "pipeline.prototypes", "pipeline.rebalance")
_OPTIM_RULES = {
    "epochs": ">=1",
    "batch_size": ">=2",
    "lr": ">0",
    "warmup_epochs": ">=0",
    "momentum": "[0,1)",
    "weight_decay": ">=0",
    "min_lr_ratio": "[0,1]",
    "lars_eta": ">0",
}
_RANGES: dict[str, str] = {
    **{f"{s}.{k}": r for s in OPTIM_SECTIONS for k, r in _OPTIM_RULES.items()},
    "data.image_size": ">=8",
    "data.imbalance": ">=1",
    "data.max_memory_gb": ">0",
    "data.workers": ">=0",
    "data.few_shot_fraction": "(0,1]",
    "data.val_per_class": ">=0",
    "data.max_per_class": ">=0",
    "augment.crop_scale_min": "(0,1]",
    "augment.flip_p": "[0,1]",
    "augment.jitter_p": "[0,1]",
    "augment.grayscale_p": "[0,1]",
    "augment.blur_p": "[0,1]",
    "augment.brightness": ">=0",
    "augment.contrast": ">=0",
    "augment.saturation": ">=0",
    "augment.hue": "[0,0.5]",
    "model.width": ">=1",
    "model.proj_hidden": ">=1",
    "model.proj_dim": ">=1",
    "train.knn_every": ">=0",
    "train.log_every": ">=1",
    "train.checkpoint_every_s": ">=0",
    "train.knn_k": ">=1",
    "simclr.temperature": ">0",
    "sdclr.temperature": ">0",
    "sdclr.prune_ratio": "[0,1)",
    "byol.pred_hidden": ">=1",
    "byol.ema": "[0,1]",
    "byol.ema_end": "[0,1]",
    "swav.num_prototypes": ">=1",
    "swav.temperature": ">0",
    "swav.sinkhorn_iters": ">=1",
    "swav.epsilon": ">0",
    "swav.queue_length": ">=0",
    "swav.queue_start_epoch": ">=0",
    "swav.freeze_prototypes_steps": ">=0",
    "prototypes.num_prototypes": ">=1",
    "prototypes.temperature": ">0",
    "rebalance.clip_std": ">=0",
    "rebalance.strength": ">=0",
    "rebalance.density_temperature": ">0",
    "rebalance.knn_k": ">=1",
    "rebalance.pred_hidden": ">=1",
    "rebalance.ema": "[0,1]",
    "rebalance.ema_end": "[0,1]",
    "probe.fast_epochs": ">=1",
    "probe.fast_lr": ">0",
    "probe.fast_weight_decay": ">=0",
    "probe.fast_batch_size": ">=1",
    "probe.sdclr_lr": ">0",
    "probe.sdclr_batch_size": ">=1",
    "probe.standard_epochs": ">=1",
    "probe.few_shot_epochs": ">=1",
    "probe.knn_k": ">=1",
    "compare.baseline_epochs": ">=0",
    "temperature.tau_min": ">0",
    "temperature.tau_max": ">0",
    "temperature.period_epochs": ">=0",
    "bcl.beta": "[0,1)",
    "bcl.num_ops": ">=1",
    "bcl.max_magnitude": "(0,1]",
    "ldam.max_margin": ">0",
    "ldam.scale": ">0",
    "ldam.drw_start": "[0,1]",
    "ldam.drw_beta": "[0,1)",
}
# datasets read from data.root (cifar may download into the cache folder instead)
ROOT_DATASETS = ("folder", "splitfile", "tinyimagenet")
# keys naming files that must exist when set
_PATH_KEYS = (
    "train.init_from",
    "pipeline.teacher_checkpoint",
    "pipeline.prototypes_checkpoint",
    "data.sdclr_splits",
)


def get_dotted(cfg: Any, dotted: str) -> Any:
    """``cfg.a.b`` for ``"a.b"``."""
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def range_problems(cfg: Any) -> list[str]:
    """One message per key whose value is outside its range (empty: all fine)."""
    problems = []
    for key, rule in _RANGES.items():
        try:
            value = get_dotted(cfg, key)
        except AttributeError:  # a section another config variant does not have
            continue
        test, wording = _RULES[rule]
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isfinite(value) or not test(value):
            problems.append(f"config key '{key}' {wording}, got {value}")
    return problems


def structure_problems(cfg: Any) -> list[str]:
    """Keys whose values only make sense together."""
    problems = []
    if not cfg.probe.settings:
        problems.append("config key 'probe.settings' must list at least one probe")
    if cfg.temperature.tau_min > cfg.temperature.tau_max:
        problems.append(
            "config key 'temperature.tau_min' must be <= temperature.tau_max, got "
            f"{cfg.temperature.tau_min} > {cfg.temperature.tau_max}"
        )
    many_few = cfg.data.group_thresholds
    if len(many_few) != 2 or not 0 <= many_few[1] <= many_few[0]:
        problems.append(
            "config key 'data.group_thresholds' must be [frequent_above, rare_below] with "
            f"0 <= rare_below <= frequent_above, got {list(many_few)}"
        )
    return problems


def path_problems(cfg: Any) -> list[str]:
    """Files and folders the config needs that are not named or do not exist (checked by
    the commands, not by ``load_config``: a packaged recipe leaves data.root to the user,
    and a config may be written before its data is in place)."""
    problems = []
    if cfg.data.dataset in ROOT_DATASETS and not cfg.data.root:
        problems.append(
            f"config key 'data.root' must name the data folder (or archive) for "
            f"data.dataset={cfg.data.dataset}"
        )
    if cfg.data.dataset in ROOT_DATASETS and cfg.data.root:
        root = Path(cfg.data.root).expanduser()
        if not root.exists():
            problems.append(f"config key 'data.root': no such file or folder: {root}")
    for key in _PATH_KEYS:
        value = get_dotted(cfg, key)
        if value and not Path(value).expanduser().exists():
            problems.append(f"config key '{key}': no such file: {value}")
    return problems


def check_paths(cfg: Any) -> Any:
    """The files and folders the config names exist; raise ConfigError naming the key."""
    from fassl.config import ConfigError

    problems = path_problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg
