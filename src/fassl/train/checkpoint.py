"""Checkpoints as safetensors files: tensors plus a JSON header, written atomically.

safetensors stores raw tensors only, so loading never unpickles code; the JSON metadata
(method, architecture, epoch, optimizer hyper-parameters) lives in the file's header.
A file is written under a temporary name and moved into place with ``os.replace``, so a
run killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "fassl-checkpoint-1"


class CheckpointError(ValueError):
    """A file that is not a readable fassl checkpoint."""


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    data = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
    save_file(data, str(tmp), metadata={"format": FORMAT, "meta": json.dumps(meta)})
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {err}") from err
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a fassl checkpoint")
    return tensors, json.loads(header["meta"])


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Optimizer state as flat tensors plus JSON-able hyper-parameters of each group."""
    sd = optimizer.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            tensors[f"{idx}.{name}"] = torch.as_tensor(value)
    return tensors, sd["param_groups"]


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def split_prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    p = prefix + "/"
    return {k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{k}": v for k, v in tensors.items()}
