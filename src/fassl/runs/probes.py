"""What a finished run is measured by: its export probed (report.md, results.json), the
teacher's probes beside the student's, the prototype and weight analyses, and, on
unlabeled data, the label-free rarity sheets."""

from __future__ import annotations

from pathlib import Path

from fassl import report
from fassl.analysis.prototypes import GridLabels, prototype_group_shares
from fassl.analysis.rarity import rank_collection
from fassl.config import Config
from fassl.data import LongTailData
from fassl.data.collection import collection_from_data
from fassl.encoders import load_encoder
from fassl.errors import DataError
from fassl.eval.evaluate import evaluate, raw_pixel_reference
from fassl.features import extract_features
from fassl.files import write_text
from fassl.names import REPORT, RESULTS, SETTINGS
from fassl.rebalance.enrichment import all_weight_diagnostics
from fassl.report.figures import save_retrieval_grid
from fassl.report.rarity import write_rarity
from fassl.runtime import Runtime
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
    report.write_json(results, out_dir / RESULTS)
    text = report.run_report(title, data.notes, results if data.labeled else None, reference)
    write_text(out_dir / REPORT, text)
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
    beside = teacher.parent / RESULTS
    if beside.is_file() and beside.stat().st_mtime >= teacher.stat().st_mtime:
        found = report.read_results(beside)  # a damaged file: probed again
        if found is not None:
            return found
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
