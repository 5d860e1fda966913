"""Running one training stage into a folder; the pipeline's stage vocabulary.

FASSL's stages are named ``teacher`` (SDCLR), ``prototypes`` (stage 1, Eq. 1-2) and
``rebalance`` (stage 2, Eq. 3-4) everywhere: sub-folders of a pipeline run, the
``pipeline.<stage>`` optimizer keys, ``analysis_<stage>.*`` files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fassl.config import Config, OptimConfig, to_yaml
from fassl.data.bundle import LongTailData
from fassl.encoders import load_backbone
from fassl.eval.knn import knn_monitor
from fassl.methods import build_method
from fassl.runtime import Runtime
from fassl.train.checkpoint import load_checkpoint
from fassl.train.loop import EXPORT, Trainer, export_encoder

# stage -> the method it trains
STAGE_METHODS = {
    "teacher": "sdclr",
    "prototypes": "fassl_prototypes",
    "rebalance": "fassl_rebalance",
}

__all__ = ["STAGE_METHODS", "load_backbone", "run_pipeline_stage", "run_stage"]


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


def run_pipeline_stage(
    cfg: Config,
    data: LongTailData,
    rt: Runtime,
    stage: str,
    init_path: Path | None = None,
    monitors: list | None = None,
) -> Path:
    """The pipeline's ``stage`` into ``out_dir/<stage>`` with ``pipeline.<stage>``'s optimizer."""
    optim_cfg: OptimConfig = getattr(cfg.pipeline, stage)
    run_dir = Path(cfg.out_dir) / stage
    return run_stage(cfg, data, rt, STAGE_METHODS[stage], optim_cfg, run_dir, init_path, monitors)
