"""FASSL end to end: SDCLR teacher, prototypes, re-balanced student, probes, analyses.

Each stage trains into its own folder under ``out_dir`` (``teacher/``, ``prototypes/``,
``rebalance/``) and is skipped when its export exists, so a killed pipeline re-run with
the same command resumes where it stopped. This module only orchestrates: training is
``fassl.runs.stage``, measuring ``fassl.runs.probes``.
"""

from __future__ import annotations

from pathlib import Path

from fassl.analysis.monitors import stage2_monitor
from fassl.config import Config
from fassl.data import LongTailData
from fassl.distributed import on_main
from fassl.runs.probes import (
    evaluate_export,
    label_free_analysis,
    prototype_analysis,
    teacher_results,
)
from fassl.runs.settings import pipeline_stages, prepare_pipeline
from fassl.runs.stage import run_pipeline_stage, started_run
from fassl.runtime import Runtime


def run_pipeline(
    cfg: Config,
    rt: Runtime,
    with_pixels: bool = False,
    data: LongTailData | None = None,
    restart: str = "",
) -> dict:
    """Teacher (SDCLR), prototypes (stage 1), re-balanced student (stage 2), then probes.

    ``restart``: a stage to train again, with the stages after it (``--restart``).

    Under torchrun every rank trains every stage; rank 0 alone locks the folders, checks
    and records settings, writes exports, analyses, results.json and report.md, while
    the others wait (``fassl.distributed.on_main``). Every rank returns the results.
    ``rt`` is the caller's (``runtime_for(cfg.train)``: it joined the process group)."""
    prepare = lambda: prepare_pipeline(cfg, restart)  # noqa: E731 (stages' settings checked)
    with started_run(cfg, prepare, pipeline_stages(cfg), data) as data:
        out = Path(cfg.out_dir)
        p = cfg.pipeline
        labeled = data.labeled and bool(data.groups)
        analyse = prototype_analysis if labeled else label_free_analysis
        probed = None  # the teacher's probes (none when stage 1 is given: its own run has them)
        if p.prototypes_checkpoint:
            prototypes = Path(p.prototypes_checkpoint)
        else:
            teacher = Path(p.teacher_checkpoint) if p.teacher_checkpoint else None
            if teacher is None:
                teacher = run_pipeline_stage(cfg, data, rt, "teacher")
            probed = on_main(lambda: teacher_results(teacher, data, cfg, rt, out))
            prototypes = run_pipeline_stage(cfg, data, rt, "prototypes", teacher)
        on_main(lambda: analyse(prototypes, cfg, data, rt, out, "prototypes"), share=False)
        monitors = [stage2_monitor(data)] if labeled else []
        student = run_pipeline_stage(cfg, data, rt, "rebalance", prototypes, monitors)
        on_main(lambda: analyse(student, cfg, data, rt, out, "rebalance"), share=False)
        title = "FASSL pipeline"
        return on_main(
            lambda: evaluate_export(student, data, cfg, rt, out, title, with_pixels, probed)
        )
