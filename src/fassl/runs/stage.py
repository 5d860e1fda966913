"""Running one training stage into a folder; the pipeline's stage vocabulary.

FASSL's stages are named ``teacher`` (SDCLR), ``prototypes`` (stage 1, Eq. 1-2) and
``rebalance`` (stage 2, Eq. 3-4) everywhere: sub-folders of a pipeline run, the
``pipeline.<stage>`` optimizer keys, ``analysis_<stage>.*`` files.

A stage folder records the settings it was trained with (``settings.json``, see
``fassl.runs.settings``); running into it again with other settings is an error naming the
changed keys unless the stage is restarted, so a finished stage is never silently reused
under a config it was not trained with.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from fassl.config import Config, OptimConfig, to_yaml
from fassl.data import LongTailData, build_data
from fassl.distributed import check_same, is_main, main_lock, on_all, on_main, world_size
from fassl.encoders import check_encoder_file, load_backbone, load_init
from fassl.errors import NonFiniteLoss, printable
from fassl.eval.knn import knn_monitor
from fassl.files import write_text
from fassl.methods import build_method
from fassl.models import check_backbone
from fassl.names import CONFIG, EXPORT
from fassl.runs.settings import (
    RUN,
    STAGE_METHODS,
    check_stage,
    diverged_hint,
    record_settings,
    run_settings,
    start_run,
)
from fassl.runtime import Runtime
from fassl.train.checkpoint import export_encoder
from fassl.train.loop import Trainer, check_batch_size

__all__ = [
    "STAGE_METHODS",
    "check_batch_size",
    "check_batch_sizes",
    "check_data",
    "check_given_checkpoints",
    "check_same_config",
    "check_same_data",
    "load_backbone",
    "load_data",
    "run_pipeline_stage",
    "run_stage",
    "started_run",
]


def check_batch_sizes(cfg: Config, data: LongTailData, stages: list[str]) -> None:
    """The batch of every stage in ``stages`` (pipeline stage names, or ``run`` for
    cfg.optim) fits the pre-training set."""
    for stage in stages:
        optim_cfg = cfg.optim if stage == RUN else getattr(cfg.pipeline, stage)
        check_batch_size(cfg, data, optim_cfg)


def _unsplit_classes(data: LongTailData) -> list[str]:
    """Classes without a test image: too few images to split, so they are never measured."""
    if not data.labeled or not data.classes:
        return []
    counts = torch.bincount(data.test.labels, minlength=len(data.classes)).tolist()
    return [data.classes[c] for c, n in enumerate(counts) if n == 0]


def check_data(cfg: Config, data: LongTailData, stages: list[str]) -> None:
    """Before training: the batch of every stage in ``stages`` (pipeline stage names, or
    ``run`` for cfg.optim) fits the data; warn about classes too small to split.

    The warning goes to stderr and into the run's notes (report.md).
    """
    unsplit = _unsplit_classes(data)
    if unsplit:
        line = printable(
            f"warning: {len(unsplit)} classes of {data.name} have too few images to split "
            f"and no test image (their accuracy is not measured): {unsplit[:10]}"
        )
        if is_main():  # every rank has the data; one of them says so
            print(f"fassl: {line}", file=sys.stderr)
        if line not in data.notes:
            data.notes.append(line)
    check_batch_sizes(cfg, data, stages)


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

    A stage whose export already exists is not trained again. The folder is locked while
    the stage trains (``fassl.processes.run_lock``). Returns the export path.

    Under torchrun every rank trains; rank 0 alone locks the folder, checks and records
    its settings and writes the export, and every rank returns only once the export is
    written, so the next stage's ranks all read a complete file.
    """
    run_dir = Path(run_dir)
    export = run_dir / EXPORT

    def prepare() -> bool:
        """Rank 0: the settings check and records; True when the stage is done already."""
        settings = check_stage(cfg, method_name, optim_cfg, run_dir)
        if export.is_file():
            print(f"[{run_dir.name}] already done: {export}")
            return True
        check_batch_size(cfg, data, optim_cfg)
        write_text(run_dir / CONFIG, to_yaml(cfg))
        record_settings(run_dir, settings)
        return False

    with main_lock(run_dir):
        if on_main(prepare):
            return export
        init = None
        if init_path is not None:
            init = load_init(init_path, cfg.model, "train.init_from")
        torch.manual_seed(cfg.seed)  # the same initial weights for the same seed
        method = build_method(cfg, method_name, init, str(init_path))
        if cfg.train.knn_every:
            monitors = [knn_monitor(data, cfg.probe.knn_k), *(monitors or [])]
        trainer = Trainer(method, data, cfg, optim_cfg, run_dir, rt, run_dir.name, monitors)
        try:
            trainer.fit()
        except NonFiniteLoss as err:
            raise NonFiniteLoss(f"{err}. {diverged_hint(cfg, optim_cfg, run_dir)}") from err
        # the training images' normalisation, for tools that embed other images later, and
        # their count: with the statistics, how ``fassl eval`` knows it found the same data
        stats = {
            "data_mean": list(data.mean),
            "data_std": list(data.std),
            "data_images": len(data.pretrain),
        }
        on_main(lambda: export_encoder(method, cfg, export, stats))
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


def _digest(tensor: torch.Tensor) -> str:
    data = tensor.detach().contiguous().cpu()
    return hashlib.sha256(data.reshape(-1).view(torch.uint8).numpy()).hexdigest()[:16]


def data_fingerprint(data: LongTailData) -> dict[str, Any]:
    """What the processes of a run must agree on about their data: the images and
    labels of each split, and a digest of the pre-training labels, classes and images
    (of a streamed set, its channel statistics: its images are not all in memory)."""
    found: dict[str, Any] = {
        "classes": hashlib.sha256("\n".join(data.classes).encode()).hexdigest()[:16],
        "pre-training labels": _digest(data.pretrain.labels),
        "channel mean": [round(v, 9) for v in data.mean],
        "channel std": [round(v, 9) for v in data.std],
    }
    for split in ("pretrain", "pool", "few_shot", "val", "test"):
        found[f"{split} images"] = len(getattr(data, split))
    if isinstance(data.pretrain.images, torch.Tensor):
        found["pre-training image bytes"] = _digest(data.pretrain.images)
    return found


def check_same_data(data: LongTailData, root: str = "") -> None:
    """Under torchrun: every rank loaded the same images (a node whose copy of the folder
    differs would train other steps, then hang in a collective); RanksDiffer otherwise."""
    if world_size() == 1:
        return  # nothing to compare: no digest of the images to take
    where = f"the data at {printable(root)}" if root else "the data"
    hint = f"every machine must hold the same copy of {where}"
    check_same("data", data_fingerprint(data), hint)


def check_same_config(cfg: Config) -> None:
    """Under torchrun: every rank resolved the same config (an override given to one
    rank alone would otherwise train, with rank 0's settings recorded); RanksDiffer
    naming the keys otherwise."""
    hint = "give every process the same command, config file and overrides"
    check_same("settings", run_settings(cfg), hint)


def load_data(cfg: Config) -> LongTailData:
    """``build_data`` on every rank (each needs the images), all ranks stopping together
    when it fails on one, or when their images differ."""
    data = on_all(lambda: build_data(cfg.data, cfg.seed))
    check_same_data(data, cfg.data.root)
    return data


@contextlib.contextmanager
def started_run(
    cfg: Config,
    prepare: Callable[[], list[Path]],
    stages: list[str],
    data: LongTailData | None = None,
) -> Iterator[LongTailData]:
    """A whole run's start, in the order every run needs it: the folder locked (a second
    run into it fails at once), the checkpoints the config names checked, the backbone
    tried on the images' size (a ViT built for 224 px on 32 px images), the settings of
    its stages checked (``prepare``, which returns the folders a restart clears), the
    data loaded (unless given) and checked against every stage, then the restarted
    stages cleared and config.yaml written. Yields the data; the lock is held until the
    block ends. Under torchrun rank 0 alone checks and writes, every rank loads, after
    the ranks found their configs the same."""
    check_same_config(cfg)
    with main_lock(cfg.out_dir):
        on_main(lambda: check_given_checkpoints(cfg))
        size = data.image_size if data is not None else cfg.data.image_size
        on_main(lambda: check_backbone(cfg.model.arch, cfg.model.kwargs, size))
        restarted = on_main(prepare)
        loaded = data or load_data(cfg)
        if loaded.image_size != size:  # a source of one size (CIFAR's 32 px) whatever the key
            on_main(lambda: check_backbone(cfg.model.arch, cfg.model.kwargs, loaded.image_size))
        on_all(lambda: check_data(cfg, loaded, stages))
        on_main(lambda: start_run(cfg, restarted))
        yield loaded
