"""FASSL end to end: SDCLR teacher, prototypes, re-balanced student, probes, analyses.

Each stage trains into its own folder under ``out_dir`` (``teacher/``, ``prototypes/``,
``rebalance/``) and is skipped when its export exists, so a killed pipeline re-run with
the same command resumes where it stopped. This module only orchestrates: training is
``fassl.stages``, loading ``fassl.encoders``, writing ``fassl.report``.
"""

from __future__ import annotations

import json
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
from fassl.distributed import main_lock, on_all, on_main
from fassl.encoders import check_encoder_file, load_encoder
from fassl.errors import DataError
from fassl.eval.evaluate import evaluate, raw_pixel_reference
from fassl.features import extract_features
from fassl.files import write_text
from fassl.names import SETTINGS
from fassl.report.figures import save_retrieval_grid
from fassl.report.rarity import write_rarity
from fassl.runsettings import RUN, pipeline_stages, prepare_pipeline, prepare_run, start_run
from fassl.runtime import Runtime, runtime_for
from fassl.stages import STAGE_METHODS, check_data, run_pipeline_stage, run_stage
from fassl.train.checkpoint import read_meta

RAW_PIXELS = "raw pixels (linear)"
TEACHER = "SDCLR teacher"
RARITY_SHEET = 32  # images on each side of an unlabeled run's contact sheets


def evaluate_export(
    export: Path,
    data: LongTailData,
    cfg: Config,
    rt: Runtime,
    out_dir: Path,
    title: str,
    with_pixels: bool = False,
    teacher: dict | None = None,
) -> dict:
    """Probe the backbone in ``export``; write results.json and report.md into ``out_dir``.
    ``teacher``: the probes of the encoder it started from, kept as ``results["teacher"]``
    and shown beside it in report.md."""
    loaded = load_encoder(export)
    backbone = loaded.backbone.to(rt.device)
    results = evaluate(backbone, data, cfg.probe, rt, cfg.seed, cfg.train.progress)
    results["checkpoint"] = str(export)
    results["method"] = loaded.meta.get("method")
    reference = {}
    if teacher is not None:
        reference[TEACHER] = results["teacher"] = teacher
    if with_pixels and data.labeled:
        reference[RAW_PIXELS] = raw_pixel_reference(data, cfg.probe, cfg.seed)
        results["raw_pixels"] = reference[RAW_PIXELS]
    reference = reference or None
    report.write_json(results, out_dir / "results.json")
    text = report.run_report(title, data.notes, results if data.labeled else None, reference)
    write_text(out_dir / "report.md", text)
    return results


# Largest difference of a channel's mean or std (images in [0, 1]) between the data an
# encoder was trained on and the data found under the same config: another decoder build
# moves them by far less, another folder of images by far more.
SAME_DATA_TOLERANCE = 2e-3


def check_trained_data(export: Path, data: LongTailData, where: str) -> None:
    """DataError when ``data`` is not the pre-training set ``export`` was trained on: its
    image count (files that record it) or its channel statistics differ. ``where`` says
    where the config came from. Files that record neither are not checked."""
    meta = read_meta(export)  # the header only: the caller loads the weights anyway
    found = {"data_images": len(data.pretrain), "data_mean": data.mean, "data_std": data.std}
    count = meta.get("data_images")
    differs = isinstance(count, int) and count != found["data_images"]
    for key in ("data_mean", "data_std"):
        recorded = meta.get(key)
        if isinstance(recorded, list) and len(recorded) == len(found[key]):
            gap = max(abs(float(a) - float(b)) for a, b in zip(recorded, found[key], strict=True))
            differs = differs or gap > SAME_DATA_TOLERANCE
    if differs:
        trained = f"{count:,} images" if isinstance(count, int) else "other images"
        raise DataError(
            f"{export} was trained on {trained} (mean {_rounded(meta.get('data_mean'))}), but "
            f"the data that {where} names now has {len(data.pretrain):,} pre-training images "
            f"(mean {_rounded(data.mean)}, {data.name}): the folder changed or is another "
            "one. Point data.root at the training data, or pass "
            "--config / data.* overrides to evaluate on other data on purpose"
        )


def _rounded(values: object) -> str:
    return str([round(float(v), 4) for v in values]) if isinstance(values, list | tuple) else "?"


def teacher_results(
    teacher: Path, data: LongTailData, cfg: Config, rt: Runtime, out: Path
) -> dict | None:
    """The probes of the pipeline's teacher: the results.json beside its export when that
    is newer than the export (a finished SDCLR run given as the teacher, or a resumed
    pipeline), else probed now, into the teacher's own folder when it is a run of this
    project (a sweep's shared teacher: probed once for every point), else into
    ``out/teacher/``; None without labels."""
    if not data.labeled:
        return None
    beside = teacher.parent / "results.json"
    if beside.is_file() and beside.stat().st_mtime >= teacher.stat().st_mtime:
        return json.loads(beside.read_text())
    own_run = (teacher.parent / SETTINGS).is_file()
    folder = teacher.parent if own_run else out / "teacher"
    folder.mkdir(parents=True, exist_ok=True)
    return evaluate_export(teacher, data, cfg, rt, folder, TEACHER)


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


def load_data(cfg: Config) -> LongTailData:
    """``build_data`` on every rank (each needs the images), all ranks stopping together
    when it fails on one."""
    return on_all(lambda: build_data(cfg.data, cfg.seed))


def run_pipeline(
    cfg: Config,
    with_pixels: bool = False,
    data: LongTailData | None = None,
    rt: Runtime | None = None,
    restart: str = "",
) -> dict:
    """Teacher (SDCLR), prototypes (stage 1), re-balanced student (stage 2), then probes.

    ``restart``: a stage to train again, with the stages after it (``--restart``).

    Under torchrun every rank trains every stage; rank 0 alone locks the folders, checks
    and records settings, writes exports, analyses, results.json and report.md, while
    the others wait (``fassl.distributed.on_main``). Every rank returns the results."""
    rt = rt or runtime_for(cfg.train)  # joins the process group before anything else
    with main_lock(cfg.out_dir):  # a second run into this folder fails at once
        out = Path(cfg.out_dir)
        on_main(lambda: check_given_checkpoints(cfg))
        # stages trained with other settings: error
        restarted = on_main(lambda: prepare_pipeline(cfg, restart))
        data = data or load_data(cfg)
        on_all(lambda: check_data(cfg, data, pipeline_stages(cfg)))
        on_main(lambda: start_run(cfg, restarted))  # clears the restarted stages, config.yaml
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
