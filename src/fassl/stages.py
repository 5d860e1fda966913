"""Running one training stage into a directory, and loading what a stage exported."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fassl.config import Config, OptimConfig, to_yaml
from fassl.data.bundle import LongTailData
from fassl.eval.knn import knn_monitor
from fassl.methods import build_method
from fassl.models import build_backbone
from fassl.models.pruning import dense_state_dict
from fassl.models.state import load_state_checked, sub_state
from fassl.runtime import Runtime
from fassl.train.checkpoint import CheckpointError, load_checkpoint, split_prefixed
from fassl.train.loop import EXPORT, Trainer, export_encoder


def run_stage(
    cfg: Config,
    data: LongTailData,
    rt: Runtime,
    method_name: str,
    optim_cfg: OptimConfig,
    run_dir: Path,
    init_path: Path | None = None,
    monitors: list | None = None,
) -> Path:
    """Train ``method_name`` into ``run_dir`` (resuming what is there) and export it.

    A stage whose export already exists is not trained again. Returns the export path.
    """
    run_dir = Path(run_dir)
    export = run_dir / EXPORT
    if export.is_file():
        print(f"[{run_dir.name}] already done: {export}")
        return export
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    init = None
    if init_path is not None:
        init, _ = load_checkpoint(Path(init_path))
    torch.manual_seed(cfg.seed)  # the same initial weights for the same seed
    method = build_method(cfg, method_name, init, str(init_path))
    if cfg.train.knn_every:
        monitors = [knn_monitor(data, cfg.train.knn_k), *(monitors or [])]
    Trainer(method, data, cfg, optim_cfg, run_dir, rt, run_dir.name, monitors).fit()
    export_encoder(method, cfg, export)
    return export


def load_backbone(path: Path) -> tuple[nn.Module, dict]:
    """The backbone stored in an exported encoder or a training checkpoint."""
    tensors, meta = load_checkpoint(Path(path))
    if "model" not in meta:
        raise CheckpointError(f"{path} does not say which model it holds")
    m = meta["model"]
    backbone = build_backbone(m["arch"], m["width"], m["cifar_stem"])
    state = sub_state(tensors, "backbone")
    if not state:  # a training checkpoint: model/<encoder>.backbone.*
        state = sub_state(dense_state_dict(split_prefixed(tensors, "model")), "encoder.backbone")
    load_state_checked(backbone, state, str(path))
    return backbone, meta
