"""What every tool needs: its run's configuration and its output folder.

A tool run on a checkpoint reads the configuration of the run that wrote it (the
``config.yaml`` beside it or up to two folders above, as ``fassl eval`` finds it) unless
``--config`` names another, so ``fassl rare`` ranks with the re-balancing weight the run
was trained with; with neither, it asks for ``--config`` rather than guess.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

from fassl.config import Config, DataConfig, load_config
from fassl.errors import ConfigError
from fassl.recipes import run_config_for


def tool_config(checkpoint: Path, config: Path | None, overrides: list[str]) -> tuple[Config, str]:
    """(the config, where it came from): ``config``, else the run's own; never the
    defaults (a ConfigError asks for ``--config`` when the run's is not found)."""
    path = config or run_config_for(checkpoint)
    return load_config(path, overrides), str(path)


def default_out(checkpoint: Path, kind: str, name: str) -> Path:
    """``<checkpoint folder>/<kind>-<data name>``, the place ``fassl eval`` also writes to
    (its data name: ``data_slug``)."""
    return checkpoint.parent / f"{kind}-{name}"


# data.* keys that change how data is read or kept, never which images or labels it holds
_STORAGE_KEYS = ("cache_dir", "download", "max_memory_gb", "workers")


def data_slug(cfg: DataConfig) -> str:
    """A folder name for the data ``cfg`` describes: ``<dataset>[-<root name>]-split<k>-``
    and 6 hex digits of every data.* key that picks images, groups or labels (the root
    as an absolute path), so evaluations on different data never share a folder and the
    same data always gets the same one (``cifar10-data-split0-1a2b3c``)."""
    keys = dataclasses.asdict(cfg)
    for key in _STORAGE_KEYS:
        keys.pop(key, None)
    root = Path(cfg.root).expanduser().absolute() if cfg.root else None
    keys["root"] = str(root or "")
    digest = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:6]
    name = root.name.removesuffix(".gz").removesuffix(".tar").removesuffix(".zip") if root else ""
    parts = [cfg.dataset, name] if name and name != cfg.dataset else [cfg.dataset]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts)).strip("._")[:48]
    return f"{readable}-split{cfg.split}-{digest}"


def eval_out(out: str | None, overrides: list[str], cfg: Config, checkpoint: Path) -> Path:
    """Where ``fassl eval`` writes: ``--out``, else an ``out_dir=`` override, else
    ``<checkpoint folder>/eval-<data slug>``: one folder per data set, so evaluations on
    other data never overwrite each other."""
    given = any(o.startswith("out_dir=") for o in overrides)
    if out is not None and given:
        raise ConfigError("--out and an out_dir= override both name the output folder: give one")
    if out is not None:
        return Path(out)
    return Path(cfg.out_dir) if given else default_out(checkpoint, "eval", data_slug(cfg.data))
