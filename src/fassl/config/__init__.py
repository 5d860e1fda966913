"""Typed run configuration.

Every knob of a run is a field of a dataclass below. A run's config is the defaults,
then a YAML recipe from ``configs/``, then ``key=value`` overrides from the command line;
OmegaConf checks each key and type against these dataclasses, so an unknown or mistyped
key is an error that names it.

An override of a key naming a path (``PATH_KEYS``) is taken as the text after the ``=``,
not read as YAML: ``out_dir=/runs/keep #2`` names the folder ``/runs/keep #2`` (YAML would
drop ``#2`` as a comment and write into ``/runs/keep``), and spaces at its end stay. A
value wholly in one pair of quotes is the quoted text, as YAML reads it, so
``data.root=''`` still empties the key. In a YAML file a path keeps YAML's rules (quote
a value holding " #"). A path with a line break is refused, from either.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fassl.config.sections import (
    COMPILE_MODES,
    AugmentConfig,
    BCLConfig,
    BYOLConfig,
    CompareConfig,
    Config,
    DataConfig,
    LDAMConfig,
    ModelConfig,
    OptimConfig,
    PipelineConfig,
    ProbeConfig,
    PrototypeConfig,
    RebalanceConfig,
    SDCLRConfig,
    SimCLRConfig,
    SplitFilesConfig,
    SwAVConfig,
    TemperatureConfig,
    TrainConfig,
)
from fassl.errors import ConfigError
from fassl.names import PIPELINE_STAGES
from fassl.registry import ARM_NAMES, DATASETS, METHOD_NAMES, WEIGHTS
from fassl.validation import (
    choice_problems,
    get_dotted,
    path_keys,
    range_problems,
    structure_problems,
)

__all__ = [
    "ARM_NAMES",
    "COMPILE_MODES",
    "DATASETS",
    "METHOD_NAMES",
    "PATH_KEYS",
    "WEIGHTS",
    "AugmentConfig",
    "BCLConfig",
    "BYOLConfig",
    "CompareConfig",
    "Config",
    "DataConfig",
    "LDAMConfig",
    "ModelConfig",
    "OptimConfig",
    "PipelineConfig",
    "ProbeConfig",
    "PrototypeConfig",
    "RebalanceConfig",
    "SDCLRConfig",
    "SimCLRConfig",
    "SplitFilesConfig",
    "SwAVConfig",
    "TemperatureConfig",
    "TrainConfig",
    "load_config",
    "optim_key",
    "to_dict",
    "to_yaml",
    "validate",
]


# Every key naming a file or folder: the path() fields, and those whose readers resolve
# them (out_dir is created, the cache folder and the list files are looked up where used).
PATH_KEYS: tuple[str, ...] = (
    *path_keys(Config()),
    "out_dir",
    "data.cache_dir",
    *(f"data.split_files.{f.name}" for f in fields(SplitFilesConfig)),
)


def line_break_problems(cfg: Config) -> list[str]:
    """One message per path key whose value holds a line break (a file name with one is
    almost always a paste gone wrong, and would be written into config.yaml as two)."""
    return [
        f"config key '{key}' must name a path on one line, got {value!r}"
        for key in PATH_KEYS
        if isinstance(value := get_dotted(cfg, key), str) and ("\n" in value or "\r" in value)
    ]


def validate(cfg: Config) -> Config:
    """Check values that a type alone cannot (choices, ranges, keys that go together),
    each by the rule its field carries; raise ConfigError naming the key."""
    problems = [
        *choice_problems(cfg),
        *range_problems(cfg),
        *structure_problems(cfg),
        *line_break_problems(cfg),
    ]
    if problems:
        also = f"\n(also: {'; '.join(problems[1:])})" if problems[1:] else ""
        raise ConfigError(problems[0] + also)
    return cfg


def _load_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        layer = OmegaConf.load(path)
    except Exception as err:  # YAML syntax errors come in several types
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(layer, DictConfig):
        raise ConfigError(
            f"config file {path}: the top level must be a mapping of keys (data:, optim:, ...), "
            f"not a {type(layer).__name__}"
        )
    return layer


def _unquoted(value: str) -> str:
    """``value``, or the text of the one pair of quotes around all of it, as YAML reads a
    quoted scalar (``''`` inside single quotes is one quote; double quotes take escapes)."""
    if len(value) < 2 or value[0] != value[-1] or value[0] not in "'\"":
        return value
    if value[0] == "'":
        return value[1:-1].replace("''", "'")
    try:
        text = json.loads(value)
    except ValueError:
        return value[1:-1]
    return text if isinstance(text, str) else value[1:-1]


def _path_layer(key: str, value: str) -> Any:
    """One override of a path key as a config layer holding ``value`` as given."""
    nested: Any = _unquoted(value).replace("${", "\\${")  # no OmegaConf interpolation
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return OmegaConf.create(nested)


def _override_layer(item: str) -> Any:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, _, value = item.partition("=")
    if key in PATH_KEYS:
        return _path_layer(key, value)
    try:
        return OmegaConf.from_dotlist([item])
    except Exception as err:  # YAML syntax errors come in several types
        raise ConfigError(
            f"override {item!r} is not valid YAML (a mapping needs a space after each colon, "
            f"e.g. compare.grid={{prototypes.num_prototypes: [64, 128]}}): {err}"
        ) from err


# Keys of earlier releases -> their key now ("" = gone: another key says the same), so
# a run folder's config.yaml and a user's recipe keep loading. Each kNN k has one name:
# ``probe.knn_k`` is the k of the kNN classifier (the probe's and the training monitor's),
# ``rebalance.weight_k`` the neighbours of stage 2's knn weight.
RENAMED = {"rebalance.knn_k": "rebalance.weight_k", "train.knn_k": ""}


def _renamed(layer: Any) -> Any:
    """``layer`` with every key of ``RENAMED`` moved to its new name (a value already given
    under the new name wins) or dropped."""
    for old, new in RENAMED.items():
        section, _, key = old.partition(".")
        if not (isinstance(layer.get(section), DictConfig) and key in layer[section]):
            continue
        value = layer[section].pop(key)
        if new and OmegaConf.select(layer, new) is None:
            OmegaConf.update(layer, new, value, force_add=True)
    return layer


def _merge(merged: Any, layer: Any, where: str) -> Any:
    """``merged`` with ``layer`` on top; a key or type the schema refuses names ``where``."""
    try:
        return OmegaConf.merge(merged, layer)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        msg = str(err).splitlines()[0]
        raise ConfigError(f"config key '{key}' {where}: {msg}") from err


def load_config(
    path: str | Path | Sequence[str | Path] | None = None, overrides: Sequence[str] | None = None
) -> Config:
    """Defaults, then the YAML file(s) at ``path`` in order, then ``key=value`` overrides.

    Each layer is merged on its own, so an unknown key or a wrong type names the file or
    the override it came from.
    """
    paths = [] if path is None else [path] if isinstance(path, str | Path) else list(path)
    merged = OmegaConf.structured(Config)
    for item in paths:
        merged = _merge(merged, _renamed(_load_yaml(Path(item))), f"in {item}")
    for item in overrides or []:
        merged = _merge(merged, _renamed(_override_layer(item)), f"in override {item!r}")
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:  # e.g. a missing value no layer set
        raise ConfigError(f"config key '{getattr(err, 'full_key', None)}': {err}") from err
    assert isinstance(cfg, Config)
    return validate(cfg)


def optim_key(cfg: Config, optim_cfg: OptimConfig) -> str:
    """Which config section ``optim_cfg`` is: ``optim`` or ``pipeline.<stage>``."""
    for stage in PIPELINE_STAGES:
        if getattr(cfg.pipeline, stage) is optim_cfg:
            return f"pipeline.{stage}"
    return "optim"


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> dict[str, Any]:
    container = OmegaConf.to_container(OmegaConf.structured(cfg))
    assert isinstance(container, dict)
    return container  # type: ignore[return-value]
