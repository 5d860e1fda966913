"""One method trained from scratch (or from ``train.init_from``) into one folder, then probed."""

from __future__ import annotations

from pathlib import Path

from fassl.config import Config
from fassl.data import LongTailData
from fassl.distributed import on_main
from fassl.runs.probes import evaluate_export, prototype_analysis
from fassl.runs.settings import RUN, prepare_run
from fassl.runs.stage import STAGE_METHODS, run_stage, started_run
from fassl.runtime import Runtime


def run_pretrain(
    cfg: Config, rt: Runtime, data: LongTailData | None = None, restart: bool = False
) -> dict:
    """One method trained from scratch (or from ``train.init_from``), then probed.

    Under torchrun: as ``run_pipeline``, rank 0 alone locks, checks, exports and probes;
    ``rt`` is the caller's, as there."""
    with started_run(cfg, lambda: prepare_run(cfg, restart), [RUN], data) as data:
        out = Path(cfg.out_dir)
        init = Path(cfg.train.init_from) if cfg.train.init_from else None
        export = run_stage(cfg, data, rt, cfg.method, cfg.optim, out, init)

        def probe() -> dict:
            if cfg.method == STAGE_METHODS["prototypes"] and data.labeled and data.groups:
                prototype_analysis(export, cfg, data, rt, out, "prototypes")
            return evaluate_export(export, data, cfg, rt, out, f"{cfg.method} pre-training")

        return on_main(probe)
