"""The one encoder loader: a path -> encoder, prototypes and metadata.

Accepts every file the project writes: a stage's or a run's ``encoder.safetensors``
(``backbone.*``, ``projector.*``, ``prototypes``) and a training checkpoint
``checkpoints/last.safetensors`` (``model/encoder.*``, SDCLR's pruned-branch BatchNorms
dropped). The architecture comes from the file's own metadata, checked before any
tensor is allocated, so a file from another model fails with a message, not an
out-of-memory crash; ``load_checkpoint`` refuses NaN or infinite weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from fassl.config import ModelConfig
from fassl.errors import CheckpointError, ConfigError, IncompatibleCheckpoint, ToolError
from fassl.models import Encoder, build_backbone, head_of_state, is_library_arch, projection_head
from fassl.models.heads import select_feature
from fassl.models.pruning import dense_state_dict
from fassl.models.state import load_state_checked, sub_state
from fassl.registry import arch_problem
from fassl.train.checkpoint import (
    is_fassl_file,
    load_checkpoint,
    load_plain_weights,
    read_meta,
    split_prefixed,
)

FEATURES = ("backbone", "projection")  # the outputs a tool can read
MAX_WIDTH = 1024  # the paper's widths are 64 (ResNet-18/50); anything this large is corrupt


@dataclass
class LoadedEncoder:
    """An encoder (backbone + projector) as trained, its prototypes and its metadata."""

    encoder: Encoder
    prototypes: torch.Tensor | None
    meta: dict[str, Any]
    source: str

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    def feature(self, name: str) -> nn.Module:
        """The z of Eq. 1 as a module: ``projection`` (the head's output) or ``backbone``."""
        return ProjectedFeature(self.encoder, name)

    def feature_net(self, name: str) -> nn.Module:
        """The module whose output is feature ``name``: the bare backbone (as the probes
        run it) or the encoder through its projection head."""
        if name not in FEATURES:
            raise ToolError(f"feature must be one of {FEATURES}, got {name!r}")
        return self.backbone if name == "backbone" else self.feature("projection")

    @property
    def training_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """The per-channel mean / std of the images the encoder was trained on, as every
        export a run writes records them; None for files written before they did."""
        mean, std = self.meta.get("data_mean"), self.meta.get("data_std")
        if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3:
            return tuple(float(m) for m in mean), tuple(float(v) for v in std)
        return None


class ProjectedFeature(nn.Module):
    """An encoder seen through one of its two outputs."""

    def __init__(self, encoder: Encoder, feature: str) -> None:
        super().__init__()
        if feature not in ("projection", "backbone"):
            raise ValueError(f"feature must be projection or backbone, got {feature!r}")
        self.encoder, self.feature = encoder, feature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return select_feature(self.encoder(x), self.feature)


def _model_spec(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """The checked ``model`` entry of a file's metadata."""
    model = meta.get("model")
    if not isinstance(model, dict):
        raise CheckpointError(f"{path} does not say which model it holds (no 'model' metadata)")
    arch, width = model.get("arch"), model.get("width")
    problem = arch_problem(arch) if isinstance(arch, str) else f"{arch!r} is not a name"
    if problem is not None:
        raise CheckpointError(f"{path}: unknown architecture: {problem}")
    if not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
        raise CheckpointError(f"{path}: model width {width!r} is not in [1, {MAX_WIDTH}]")
    if not isinstance(model.setdefault("kwargs", {}), dict):
        raise CheckpointError(f"{path}: model.kwargs is not a mapping")
    for key in ("proj_hidden", "proj_dim"):
        value = model.get(key)  # absent: read from the weights (older exports)
        if value is not None and (not isinstance(value, int) or not 1 <= value <= 65536):
            raise CheckpointError(f"{path}: model.{key} {value!r} is not a sensible size")
    if not isinstance(model.get("cifar_stem"), bool):
        raise CheckpointError(f"{path}: model.cifar_stem is missing or not a boolean")
    return model


def _encoder_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``backbone.*`` and ``projector.*`` of an export or a training checkpoint."""
    state = {k: v for k, v in tensors.items() if k.split(".")[0] in ("backbone", "projector")}
    if state:
        return state
    return sub_state(dense_state_dict(split_prefixed(tensors, "model")), "encoder")


def _rows(state: dict[str, torch.Tensor], key: str, path: Path) -> int:
    if key not in state:
        raise CheckpointError(f"{path} holds no projection head ({key} is missing)")
    return int(state[key].shape[0])


def load_encoder(path: str | Path) -> LoadedEncoder:
    """The encoder in ``path`` (an export or a training checkpoint), on the CPU."""
    path = Path(path)
    tensors, meta = load_checkpoint(path)
    model = _model_spec(meta, path)
    state = _encoder_state(tensors)
    if not state:
        raise CheckpointError(f"{path} holds no encoder weights")
    stem = state.get("backbone.stem.0.weight")
    own = not is_library_arch(model["arch"])
    if own and (stem is None or stem.shape[0] != model["width"]):
        found = None if stem is None else stem.shape[0]
        raise CheckpointError(
            f"{path}: its weights have width {found}, its metadata says {model['width']}"
        )
    try:
        backbone = build_backbone(
            model["arch"], model["width"], model["cifar_stem"], model["kwargs"]
        )
    except ConfigError as err:  # the library is missing, or no longer builds the model
        raise CheckpointError(f"{path}: {err}") from err
    hidden = model.get("proj_hidden") or _rows(state, "projector.0.weight", path)
    out_dim = model.get("proj_dim") or _rows(state, "projector.3.weight", path)
    head = projection_head(head_of_state(state), backbone.out_dim, hidden, out_dim)
    encoder = Encoder(backbone, head)
    load_state_checked(encoder, state, str(path))
    prototypes = tensors.get("prototypes", tensors.get("model/prototypes"))
    return LoadedEncoder(encoder, prototypes, meta, str(path))


def library_weights(path: Path, model: ModelConfig, key: str) -> dict[str, torch.Tensor]:
    """A model library's own weights file (timm's or torchvision's names, e.g. a
    downloaded ``model.safetensors``) for ``model``'s library backbone, as ``backbone.*``
    entries. Keys the backbone lacks (the library's classifier) are dropped; anything
    else that does not fit is an IncompatibleCheckpoint naming ``key``."""
    backbone = build_backbone(model.arch, model.width, model.cifar_stem, model.kwargs)
    own = backbone.state_dict()
    tensors = load_plain_weights(path)
    kept = {k: v for k, v in tensors.items() if k in own}
    load_state_checked(backbone, kept, f"config key '{key}': {path} ({model.arch})")
    return {f"backbone.{k}": v for k, v in kept.items()}


def load_init(path: str | Path, model: ModelConfig, key: str) -> dict[str, torch.Tensor]:
    """What a run named by ``key`` starts from: an encoder file of this project (its
    tensors), or, for a timm / torchvision backbone, the library's own weights file."""
    path = Path(path)
    if is_library_arch(model.arch) and not is_fassl_file(path):
        return library_weights(path, model, key)
    return load_checkpoint(path)[0]


def check_encoder_file(
    path: str | Path, model: ModelConfig, key: str, needs_prototypes: bool = False
) -> None:
    """Before any work: the file ``key`` names holds an encoder of ``model``'s architecture
    and width (and prototypes, for stage 2's input), read from its header and tensor names
    without loading a tensor; an IncompatibleCheckpoint naming the key otherwise. A
    library's own weights file for a timm / torchvision backbone is loaded and checked
    against the model (``library_weights``)."""
    path = Path(path)
    if is_library_arch(model.arch) and not needs_prototypes and not is_fassl_file(path):
        library_weights(path, model, key)
        return
    spec = _model_spec(read_meta(path), path)
    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
    problems = []
    own = ("width", "cifar_stem") if not is_library_arch(model.arch) else ("kwargs",)
    for field in ("arch", *own):
        if spec.get(field) != getattr(model, field):
            problems.append(
                f"model.{field} {spec.get(field)!r} (the config: {getattr(model, field)!r})"
            )
    if not any(n.startswith(("backbone.", "model/encoder.backbone.")) for n in names):
        problems.append("no encoder weights")
    if needs_prototypes and not {"prototypes", "model/prototypes"} & names:
        problems.append("no prototypes (stage 2 starts from a FASSL stage-1 export)")
    if problems:
        raise IncompatibleCheckpoint(
            f"config key '{key}': {path} does not fit this run: " + "; ".join(problems)
        )


def load_backbone(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The backbone stored in ``path`` and the file's metadata."""
    loaded = load_encoder(path)
    return loaded.backbone, loaded.meta
