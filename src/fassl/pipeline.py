"""FASSL end to end: SDCLR teacher, prototypes, re-balanced student, probes, analyses.

Each stage trains into its own folder under ``out_dir`` (``teacher/``, ``prototypes/``,
``rebalance/``) and is skipped when its export exists, so a killed pipeline re-run with
the same command resumes where it stopped. This module only orchestrates: training is
``fassl.stages``, loading ``fassl.encoders``, writing ``fassl.report``.
"""

from __future__ import annotations

from pathlib import Path

from fassl import report
from fassl.analysis.monitors import stage2_monitor
from fassl.analysis.prototypes import GridLabels, prototype_group_shares
from fassl.analysis.rarity import rank_collection
from fassl.analysis.weights import all_weight_diagnostics
from fassl.config import Config
from fassl.data.build import build_data
from fassl.data.bundle import LongTailData
from fassl.data.collection import collection_from_data
from fassl.encoders import check_encoder_file, load_encoder
from fassl.eval.evaluate import evaluate, raw_pixel_reference
from fassl.features import extract_features
from fassl.files import write_text
from fassl.processes import run_lock
from fassl.report.figures import save_retrieval_grid
from fassl.report.rarity import write_rarity
from fassl.runsettings import RUN, pipeline_stages, prepare_pipeline, prepare_run, start_run
from fassl.runtime import Runtime, runtime_for
from fassl.stages import STAGE_METHODS, check_data, run_pipeline_stage, run_stage

RAW_PIXELS = "raw pixels (linear)"
RARITY_SHEET = 32  # images on each side of an unlabeled run's contact sheets


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
    write_text(out_dir / "report.md", text)
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
    write_text(out_dir / f"analysis_{stage}.md", report.analysis_markdown(stage, diag, shares))
    save_retrieval_grid(
        data.pretrain.images,
        feats,
        prototypes,
        str(out_dir / f"retrieval_{stage}.png"),
        f"Prototypes after stage {stage}",
        GridLabels(labels, data.classes, groups),
    )
    return payload


def label_free_analysis(
    export: Path, cfg: Config, data: LongTailData, rt: Runtime, out_dir: Path, stage: str
) -> list[str]:
    """What an unlabeled pipeline run can say about its images after ``stage``: the
    rarity ranking (``rarity_<stage>/``), prototype occupancy and the retrieval grid.

    With rebalance.weight=none (phi = 1) the ranking uses ``knn`` instead.
    """
    coll = collection_from_data(data, cfg.data)
    weight = cfg.rebalance.weight if cfg.rebalance.weight != "none" else "knn"
    loaded = load_encoder(export)
    ranking, feats = rank_collection(loaded, coll, cfg, rt, [weight], progress=cfg.train.progress)
    meta = {"checkpoint": str(export), "stage": stage, "feature": cfg.prototypes.feature}
    folder = f"rarity_{stage}"
    written = write_rarity(out_dir / folder, coll, ranking, meta, RARITY_SHEET, cfg.seed)
    written = [f"{folder}/{name}" for name in written]
    if loaded.prototypes is not None:
        grid = f"retrieval_{stage}.png"
        title = f"Prototypes after stage {stage} (no labels)"
        save_retrieval_grid(coll.images, feats, loaded.prototypes, str(out_dir / grid), title)
        written.append(grid)
    return written


def check_given_checkpoints(cfg: Config) -> None:
    """The checkpoints the config hands to a stage fit it, before anything trains."""
    p = cfg.pipeline
    if p.prototypes_checkpoint:
        keys = "pipeline.prototypes_checkpoint"
        check_encoder_file(p.prototypes_checkpoint, cfg.model, keys, needs_prototypes=True)
    elif p.teacher_checkpoint:
        check_encoder_file(p.teacher_checkpoint, cfg.model, "pipeline.teacher_checkpoint")
    if cfg.train.init_from:
        rebalance = cfg.method == STAGE_METHODS["rebalance"]
        check_encoder_file(cfg.train.init_from, cfg.model, "train.init_from", rebalance)


def run_pipeline(
    cfg: Config,
    with_pixels: bool = False,
    data: LongTailData | None = None,
    rt: Runtime | None = None,
    restart: str = "",
) -> dict:
    """Teacher (SDCLR), prototypes (stage 1), re-balanced student (stage 2), then probes.

    ``restart``: a stage to train again, with the stages after it (``--restart``)."""
    with run_lock(cfg.out_dir):  # a second run into this folder fails at once
        out = Path(cfg.out_dir)
        check_given_checkpoints(cfg)
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
    with run_lock(cfg.out_dir):  # a second run into this folder fails at once
        out = Path(cfg.out_dir)
        check_given_checkpoints(cfg)
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
