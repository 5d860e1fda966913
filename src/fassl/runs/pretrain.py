"""One method trained from scratch (or from ``train.init_from``) into one folder, then probed."""

from __future__ import annotations

from pathlib import Path

from fassl.config import Config
from fassl.data import LongTailData
from fassl.distributed import main_lock, on_all, on_main
from fassl.runs.probes import evaluate_export, prototype_analysis
from fassl.runs.settings import RUN, prepare_run, start_run
from fassl.runs.stage import (
    STAGE_METHODS,
    check_data,
    check_given_checkpoints,
    load_data,
    run_stage,
)
from fassl.runtime import Runtime, runtime_for


def run_pretrain(
    cfg: Config, data: LongTailData | None = None, rt: Runtime | None = None, restart: bool = False
) -> dict:
    """One method trained from scratch (or from ``train.init_from``), then probed.

    Under torchrun: as ``run_pipeline``, rank 0 alone locks, checks, exports and probes."""
    rt = rt or runtime_for(cfg.train)  # joins the process group before anything else
    with main_lock(cfg.out_dir):  # a second run into this folder fails at once
        out = Path(cfg.out_dir)
        on_main(lambda: check_given_checkpoints(cfg))
        restarted = on_main(lambda: prepare_run(cfg, restart))
        data = data or load_data(cfg)
        on_all(lambda: check_data(cfg, data, [RUN]))
        on_main(lambda: start_run(cfg, restarted))
        init = Path(cfg.train.init_from) if cfg.train.init_from else None
        export = run_stage(cfg, data, rt, cfg.method, cfg.optim, out, init)

        def probe() -> dict:
            if cfg.method == STAGE_METHODS["prototypes"] and data.labeled and data.groups:
                prototype_analysis(export, cfg, data, rt, out, "prototypes")
            return evaluate_export(export, data, cfg, rt, out, f"{cfg.method} pre-training")

        return on_main(probe)
