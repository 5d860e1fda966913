"""Checkpoints as safetensors files: tensors plus a JSON header, written atomically.

safetensors stores raw tensors only, so loading never unpickles code; the JSON metadata
(method, architecture, epoch, optimizer hyper-parameters) lives in the file's header.
A file is written under a temporary name and moved into place with ``os.replace``, so a
run killed while saving leaves the previous checkpoint intact. Before writing, the
state is checked to be finite (a diverged run never overwrites its last good state) and
the disk to have room; the header records a SHA-256 of the tensor bytes, which loading
checks, so a damaged file is reported as corrupt rather than as a diverged run. The file
gets the mode of every other output (0666 less the umask), not safetensors' 0600.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fassl import distributed as dist
from fassl.config import Config, to_dict
from fassl.errors import CheckpointError, DiskFull, RunConflict
from fassl.files import check_space, set_output_mode, space_needed
from fassl.methods.base import Method
from fassl.processes import pid_alive

FORMAT = "fassl-checkpoint-1"
TMP_MARK = ".tmp-"  # save_checkpoint writes ".<name>.tmp-<pid>" and renames it


def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors holding NaN or infinite values."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().contiguous().cpu()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy())  # no copy: a buffer
    return digest.hexdigest()


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``tensors`` and ``meta`` to ``path`` atomically; refuse non-finite tensors
    (CheckpointError) and a disk without room (DiskFull), leaving ``path`` as it was."""
    data = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
    bad = non_finite(data)
    if bad:
        raise CheckpointError(
            f"not writing {path}: {len(bad)} tensors hold NaN or infinite values "
            f"(e.g. {bad[:3]}); the file keeps its previous content"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, "meta": json.dumps(meta), "sha256": tensor_digest(data)}
    needed = sum(t.numel() * t.element_size() for t in data.values())
    check_space(path.parent, needed, path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        save_file(data, str(tmp), metadata=header)
        set_output_mode(tmp)  # safetensors creates its file 0600
        os.replace(tmp, path)
    except (OSError, SafetensorError) as err:
        tmp.unlink(missing_ok=True)
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DiskFull(
            f"could not write {path} ({space_needed(path.parent, needed)}): {cause}; "
            "the previous checkpoint is intact"
        ) from err


def _read_header(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {err}") from err


def is_fassl_file(path: Path) -> bool:
    """Whether ``path`` is a checkpoint or export this project wrote (else, say, a model
    library's own weights file); a missing or unreadable file is a CheckpointError."""
    return _read_header(path).get("format") == FORMAT


def load_plain_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of any safetensors file (no metadata needed), every float finite."""
    _read_header(path)  # missing or unreadable: the same errors as a checkpoint's
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    check_finite(tensors, path)
    return tensors


def read_meta(path: Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint's header, without reading its tensors."""
    header = _read_header(path)
    found = header.get("format")
    if found != FORMAT:
        # a file of another format version names both, not "not a fassl checkpoint"
        if isinstance(found, str) and found.startswith(FORMAT.rpartition("-")[0] + "-"):
            raise CheckpointError(
                f"{path} is a fassl checkpoint of format {found!r}; this version of fassl "
                f"reads {FORMAT!r} (use the fassl version that wrote it, or train again)"
            )
        raise CheckpointError(f"{path} is a safetensors file but not a fassl checkpoint")
    try:
        meta = json.loads(header.get("meta", ""))
    except ValueError as err:
        raise CheckpointError(f"{path}: the header's metadata is not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: the header's metadata is not a JSON object")
    return meta


def check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights with NaN or infinite values: a diverged run saved them (this
    version never writes them), and training or probing from them only spreads NaNs."""
    bad = non_finite(tensors)
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} tensors hold NaN or infinite values (e.g. {bad[:3]}): the "
            "run diverged; use an earlier checkpoint or train again with a lower lr"
        )


def check_owner(path: Path, meta: dict[str, Any], stage: str, method: str) -> None:
    """The checkpoint ``path`` (header ``meta``) was written by ``stage`` training ``method``:
    a folder reused by another stage must not resume from it."""
    if meta.get("method") != method or meta.get("stage") != stage:
        raise RunConflict(
            f"{path} belongs to stage {meta.get('stage')!r} (method {meta.get('method')!r}), "
            f"not to {stage!r} ({method}): use another out_dir"
        )


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a checkpoint: the tensor bytes checked against the header's
    checksum (files written before it existed have none), every float tensor finite."""
    meta = read_meta(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {err}") from err
    recorded = _read_header(path).get("sha256")
    if recorded is not None and tensor_digest(tensors) != recorded:
        raise CheckpointError(
            f"{path} is a corrupt file: its tensor bytes do not match the checksum written "
            "with them (a damaged copy or a disk error, not a diverged run); use another "
            "copy or train again"
        )
    check_finite(tensors, path)
    return tensors, meta


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete ``.<name>.tmp-<pid>`` files of killed saves in ``folder``; return them.

    A save killed between writing and renaming leaves its temporary file behind (the
    checkpoint itself stays intact). Files of a process that is still running are kept.
    """
    removed = []
    if not folder.is_dir():
        return removed
    for tmp in folder.glob(f".*{TMP_MARK}*"):
        pid = tmp.name.rpartition(TMP_MARK)[2]
        if pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


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


def export_encoder(method: Method, cfg: Config, path: Path, extra: dict | None = None) -> None:
    """Write what evaluation and later stages load: encoder weights (+ prototypes)."""
    if not dist.is_main():
        return
    meta = {"method": method.name, "model": to_dict(cfg.model), "complete": True} | (extra or {})
    save_checkpoint(path, method.export_state(), meta)
