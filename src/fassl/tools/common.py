"""What every tool needs: its run's configuration, its output folder, the encoder's features.

A tool run on a checkpoint reads the configuration of the run that wrote it (the
``config.yaml`` beside it or up to two folders above, as ``fassl eval`` finds it) unless
``--config`` names another, so ``fassl rare`` ranks with the
re-balancing weight the run was trained with.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from fassl.cli import find_run_config
from fassl.config import Config, load_config
from fassl.encoders import LoadedEncoder
from fassl.features import extract_features
from fassl.runtime import Runtime
from fassl.tools import ToolError
from fassl.tools.collection import Collection

FEATURES = ("backbone", "projection")
PROGRESS_CHUNK = 4096  # images between progress-bar updates (each chunk is batched)


def tool_config(checkpoint: Path, config: Path | None, overrides: list[str]) -> tuple[Config, str]:
    """(the config, where it came from): ``config``, else the run's, else the defaults."""
    path = config or find_run_config(checkpoint)
    where = str(path) if path is not None else "the defaults"
    return load_config(path, overrides), where


def default_out(checkpoint: Path, kind: str, name: str) -> Path:
    """``<checkpoint folder>/<kind>-<data name>``, the place ``fassl eval`` also writes to."""
    return checkpoint.parent / f"{kind}-{name}"


def feature_net(loaded: LoadedEncoder, feature: str) -> nn.Module:
    """The module whose output is ``feature``: the bare backbone (as the probe runs it)
    or the encoder through its projection head."""
    if feature not in FEATURES:
        raise ToolError(f"feature must be one of {FEATURES}, got {feature!r}")
    return loaded.backbone if feature == "backbone" else loaded.feature("projection")


def with_training_normalisation(coll: Collection, loaded: LoadedEncoder) -> Collection:
    """``coll`` normalised as the encoder's training images were, when its file records
    their per-channel mean / std (exports written by a run do); else as it is (its own
    statistics)."""
    mean, std = loaded.meta.get("data_mean"), loaded.meta.get("data_std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3):
        return coll
    note = f"normalised with the training set's mean / std recorded in {loaded.source}"
    return dataclasses.replace(coll, mean=tuple(mean), std=tuple(std), notes=[*coll.notes, note])


def embed_collection(
    net: nn.Module, coll: Collection, rt: Runtime, batch_size: int = 512, progress: bool = True
) -> torch.Tensor:
    """float32 (N, D) features of every image of ``coll``, batched on ``rt``'s device.

    Each chunk goes through ``extract_features``, the probe's own extraction, so the
    rows are exactly the features the probe sees for the same images.
    """
    net = net.to(rt.device)
    chunks = []
    with tqdm(total=len(coll), unit="img", desc="features", disable=not progress) as bar:
        for start in range(0, len(coll), PROGRESS_CHUNK):
            part = coll.images[start : start + PROGRESS_CHUNK]
            chunks.append(extract_features(net, part, coll.mean, coll.std, rt, batch_size))
            bar.update(int(part.shape[0]))
    return torch.cat(chunks)
