"""FASSL end to end: SDCLR teacher, prototypes, re-balanced student, probes, analyses.

Each stage trains into its own folder under ``out_dir`` and is skipped when its export
exists, so a killed pipeline re-run with the same command resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fassl.analysis.prototypes import nearest_images, prototype_group_shares, save_retrieval_grid
from fassl.analysis.weights import all_weight_diagnostics, enrichment_table, weight_enrichment
from fassl.config import Config, to_yaml
from fassl.data.build import build_data
from fassl.data.bundle import LongTailData
from fassl.eval.evaluate import (
    evaluate,
    format_results_table,
    raw_pixel_reference,
    write_results,
)
from fassl.features import extract_features
from fassl.methods import build_encoder
from fassl.methods.fassl import RebalancedBYOL, select_feature
from fassl.models.state import load_state_checked
from fassl.runtime import Runtime, runtime_for
from fassl.stages import load_backbone, run_stage
from fassl.train.checkpoint import load_checkpoint
from fassl.train.loop import Trainer


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
    backbone, meta = load_backbone(export)
    backbone.to(rt.device)
    results = evaluate(backbone, data, cfg.probe, rt, cfg.seed, cfg.train.progress)
    results["checkpoint"] = str(export)
    results["method"] = meta.get("method")
    reference = None
    if with_pixels and data.labeled:
        reference = {"raw pixels (linear)": raw_pixel_reference(data, cfg.probe, cfg.seed)}
        results["raw_pixels"] = reference["raw pixels (linear)"]
    write_results(results, out_dir / "results.json")
    report = f"# {title}\n\n" + "\n".join(f"- {n}" for n in data.notes) + "\n\n"
    if data.labeled:
        report += format_results_table(results, reference) + "\n"
    (out_dir / "report.md").write_text(report)
    return results


class ProjectedFeature(nn.Module):
    """The z of Eq. 1 as a module, for feature extraction."""

    def __init__(self, encoder: nn.Module, feature: str) -> None:
        super().__init__()
        self.encoder, self.feature = encoder, feature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return select_feature(self.encoder(x), self.feature)


def encoder_features(
    export: Path, cfg: Config, data: LongTailData, rt: Runtime
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z of every pretraining image, prototypes) from a stage export holding prototypes."""
    tensors, _ = load_checkpoint(export)
    encoder = build_encoder(cfg)
    load_state_checked(
        encoder, {k: v for k, v in tensors.items() if k != "prototypes"}, str(export)
    )

    z_of = ProjectedFeature(encoder, cfg.prototypes.feature).to(rt.device)
    feats = extract_features(z_of, data.pretrain.images, data.mean, data.std, rt)
    return feats, tensors["prototypes"]


def prototype_analysis(
    export: Path, cfg: Config, data: LongTailData, rt: Runtime, out_dir: Path, stage: str
) -> dict:
    """Weight enrichment of every variant and the prototypes' class groups (labels used
    for analysis only), written as JSON, markdown and a retrieval grid."""
    feats, prototypes = encoder_features(export, cfg, data, rt)
    r = cfg.rebalance
    labels, groups = data.pretrain.labels, data.groups
    diag = all_weight_diagnostics(
        feats, prototypes, labels, groups, density_temperature=r.density_temperature, knn_k=r.knn_k
    )
    shares = prototype_group_shares(feats, prototypes, labels, groups)
    payload = {"stage": stage, "weights": diag, "prototype_nearest_image_groups": shares}
    write_results(payload, out_dir / f"analysis_{stage}.json")
    text = (
        f"## Weight enrichment after {stage} (top 5% of weights)\n\n"
        f"{enrichment_table(diag)}\n\nPrototypes whose nearest image is Frequent / Medium /"
        f" Rare: {shares['frequent']:.2f} / {shares['medium']:.2f} / {shares['rare']:.2f}\n"
    )
    (out_dir / f"analysis_{stage}.md").write_text(text)
    save_retrieval_grid(
        data.pretrain.images,
        nearest_images(feats, prototypes),
        str(out_dir / f"prototypes_{stage}.png"),
    )
    return payload


def stage2_monitor(data: LongTailData):
    """During stage 2: enrichment of the configured weight on the teacher's features."""

    def monitor(trainer: Trainer) -> dict[str, float]:
        method = trainer.method
        if not isinstance(method, RebalancedBYOL) or method.weight == "none":
            return {}
        feats = trainer.embed(method.teacher_feature)
        d = weight_enrichment(method.log_phi(feats).cpu(), data.pretrain.labels, data.groups)
        return {f"top5_share_{g}": d["top_share"][g] for g in d["top_share"]} | {
            f"mean_log_phi_{g}": d["mean_log_phi"][g] for g in d["mean_log_phi"]
        }

    return monitor


def run_pipeline(
    cfg: Config,
    with_pixels: bool = False,
    data: LongTailData | None = None,
    rt: Runtime | None = None,
) -> dict:
    """Stage 0 (SDCLR), stage 1 (prototypes), stage 2 (re-balanced student), then probes."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    rt = rt or runtime_for(cfg.train)
    data = data or build_data(cfg.data, cfg.seed)
    p = cfg.pipeline
    if p.prototypes_checkpoint:
        prototypes = Path(p.prototypes_checkpoint)
    else:
        teacher = (
            Path(p.teacher_checkpoint)
            if p.teacher_checkpoint
            else run_stage(cfg, data, rt, "sdclr", p.teacher, out / "teacher")
        )
        prototypes = run_stage(
            cfg, data, rt, "fassl_prototypes", p.prototypes, out / "prototypes", init_path=teacher
        )
    labeled = data.labeled and bool(data.groups)
    if labeled:
        prototype_analysis(prototypes, cfg, data, rt, out, "stage1")
    monitors = [stage2_monitor(data)] if labeled else []
    student = run_stage(
        cfg,
        data,
        rt,
        "fassl_rebalance",
        p.rebalance,
        out / "rebalance",
        init_path=prototypes,
        monitors=monitors,
    )
    if labeled:
        prototype_analysis(student, cfg, data, rt, out, "stage2")
    return evaluate_export(student, data, cfg, rt, out, "FASSL pipeline", with_pixels)


def run_pretrain(cfg: Config, data: LongTailData | None = None, rt: Runtime | None = None) -> dict:
    """One method trained from scratch (or from ``train.init_from``), then probed."""
    out = Path(cfg.out_dir)
    rt = rt or runtime_for(cfg.train)
    data = data or build_data(cfg.data, cfg.seed)
    init = Path(cfg.train.init_from) if cfg.train.init_from else None
    export = run_stage(cfg, data, rt, cfg.method, cfg.optim, out, init_path=init)
    if cfg.method == "fassl_prototypes" and data.labeled and data.groups:
        prototype_analysis(export, cfg, data, rt, out, "stage1")
    return evaluate_export(export, data, cfg, rt, out, f"{cfg.method} pre-training")
