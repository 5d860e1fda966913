"""FASSL end to end: SDCLR teacher, prototypes, re-balanced student, probes, analyses.

Each stage trains into its own folder under ``out_dir`` (``teacher/``, ``prototypes/``,
``rebalance/``) and is skipped when its export exists, so a killed pipeline re-run with
the same command resumes where it stopped. This module only orchestrates: training is
``fassl.stages``, loading ``fassl.encoders``, writing ``fassl.report``.
"""

from __future__ import annotations

from pathlib import Path

from fassl import report
from fassl.analysis.prototypes import GridLabels, prototype_group_shares, save_retrieval_grid
from fassl.analysis.weights import all_weight_diagnostics, weight_enrichment
from fassl.config import Config
from fassl.data.build import build_data
from fassl.data.bundle import LongTailData
from fassl.encoders import load_encoder
from fassl.eval.evaluate import evaluate, raw_pixel_reference
from fassl.features import extract_features
from fassl.runsettings import RUN, pipeline_stages, prepare_pipeline, prepare_run, start_run
from fassl.runtime import Runtime, runtime_for
from fassl.stages import STAGE_METHODS, check_data, run_pipeline_stage, run_stage
from fassl.tools.rare import label_free_analysis
from fassl.train.loop import Trainer

RAW_PIXELS = "raw pixels (linear)"


def evaluate_export(
    export: Path,
    data: LongTailData,
    cfg: Config,
    rt: Runtime,
    out_dir: Path,
    title: str,
    with_pixels: bool = False,
) -> dict:
    """Probe the backbone in ``export``; write results.json and report.md into ``out_dir``."""
    loaded = load_encoder(export)
    backbone = loaded.backbone.to(rt.device)
    results = evaluate(backbone, data, cfg.probe, rt, cfg.seed, cfg.train.progress)
    results["checkpoint"] = str(export)
    results["method"] = loaded.meta.get("method")
    reference = None
    if with_pixels and data.labeled:
        reference = {RAW_PIXELS: raw_pixel_reference(data, cfg.probe, cfg.seed)}
        results["raw_pixels"] = reference[RAW_PIXELS]
    report.write_json(results, out_dir / "results.json")
    text = report.run_report(title, data.notes, results if data.labeled else None, reference)
    (out_dir / "report.md").write_text(text, encoding="utf-8", errors="backslashreplace")
    return results


def prototype_analysis(
    export: Path, cfg: Config, data: LongTailData, rt: Runtime, out_dir: Path, stage: str
) -> dict:
    """Weight enrichment of every variant and the prototypes' class groups (labels used
    for analysis only), written as JSON, markdown and a retrieval grid."""
    loaded = load_encoder(export)
    z_of = loaded.feature(cfg.prototypes.feature).to(rt.device)
    feats = extract_features(z_of, data.pretrain.images, data.mean, data.std, rt)
    prototypes = loaded.prototypes
    assert prototypes is not None, f"{export} holds no prototypes"
    labels, groups = data.pretrain.labels, data.groups
    diag = all_weight_diagnostics(feats, prototypes, labels, groups, cfg.rebalance)
    shares = prototype_group_shares(feats, prototypes, labels, groups)
    payload = {"stage": stage, "weights": diag, "prototype_nearest_image_groups": shares}
    report.write_json(payload, out_dir / f"analysis_{stage}.json")
    (out_dir / f"analysis_{stage}.md").write_text(report.analysis_markdown(stage, diag, shares))
    save_retrieval_grid(
        data.pretrain.images,
        feats,
        prototypes,
        str(out_dir / f"retrieval_{stage}.png"),
        f"Prototypes after stage {stage}",
        GridLabels(labels, data.classes, groups),
    )
    return payload


def stage2_monitor(data: LongTailData):
    """During stage 2: enrichment of the configured weight on the teacher's features."""

    def monitor(trainer: Trainer) -> dict[str, float]:
        log_phi = trainer.method.dataset_log_phi(trainer.embed)
        if log_phi is None:
            return {}
        d = weight_enrichment(log_phi.cpu(), data.pretrain.labels, data.groups)
        return {f"top5_share_{g}": d["top_share"][g] for g in d["top_share"]} | {
            f"mean_log_phi_{g}": d["mean_log_phi"][g] for g in d["mean_log_phi"]
        }

    return monitor


def run_pipeline(
    cfg: Config,
    with_pixels: bool = False,
    data: LongTailData | None = None,
    rt: Runtime | None = None,
    restart: str = "",
) -> dict:
    """Teacher (SDCLR), prototypes (stage 1), re-balanced student (stage 2), then probes.

    ``restart``: a stage to train again, with the stages after it (``--restart``)."""
    out = Path(cfg.out_dir)
    restarted = prepare_pipeline(cfg, restart)  # stages trained with other settings: error
    rt = rt or runtime_for(cfg.train)
    data = data or build_data(cfg.data, cfg.seed)
    check_data(cfg, data, pipeline_stages(cfg))
    start_run(cfg, restarted)  # clears the restarted stages, writes config.yaml
    p = cfg.pipeline
    labeled = data.labeled and bool(data.groups)
    if p.prototypes_checkpoint:
        prototypes = Path(p.prototypes_checkpoint)
    else:
        teacher = Path(p.teacher_checkpoint) if p.teacher_checkpoint else None
        if teacher is None:
            teacher = run_pipeline_stage(cfg, data, rt, "teacher")
        prototypes = run_pipeline_stage(cfg, data, rt, "prototypes", teacher)
    if labeled:
        prototype_analysis(prototypes, cfg, data, rt, out, "prototypes")
    else:
        label_free_analysis(prototypes, cfg, data, rt, out, "prototypes")
    monitors = [stage2_monitor(data)] if labeled else []
    student = run_pipeline_stage(cfg, data, rt, "rebalance", prototypes, monitors)
    if labeled:
        prototype_analysis(student, cfg, data, rt, out, "rebalance")
    else:
        label_free_analysis(student, cfg, data, rt, out, "rebalance")
    return evaluate_export(student, data, cfg, rt, out, "FASSL pipeline", with_pixels)


def run_pretrain(
    cfg: Config, data: LongTailData | None = None, rt: Runtime | None = None, restart: bool = False
) -> dict:
    """One method trained from scratch (or from ``train.init_from``), then probed."""
    out = Path(cfg.out_dir)
    restarted = prepare_run(cfg, restart)
    rt = rt or runtime_for(cfg.train)
    data = data or build_data(cfg.data, cfg.seed)
    check_data(cfg, data, [RUN])
    start_run(cfg, restarted)
    init = Path(cfg.train.init_from) if cfg.train.init_from else None
    export = run_stage(cfg, data, rt, cfg.method, cfg.optim, out, init)
    if cfg.method == STAGE_METHODS["prototypes"] and data.labeled and data.groups:
        prototype_analysis(export, cfg, data, rt, out, "prototypes")
    return evaluate_export(export, data, cfg, rt, out, f"{cfg.method} pre-training")
