"""Ranges and paths of the config keys, checked before any work starts.

A type says a key is an int; only a range says that ``optim.epochs=-1`` or
``data.few_shot_fraction=0`` cannot train. Every numeric key of the config carries its
rule beside its default (``ranged``), so a wrong value fails in ``load_config`` naming the
key, instead of as a ZeroDivisionError or an empty tensor minutes into a run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import field, fields, is_dataclass
from pathlib import Path
from typing import Any

from fassl.errors import ConfigError
from fassl.registry import ROOT_DATASETS, arch_problem

# rule name -> (test, wording)
_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    ">=0": (lambda v: v >= 0, "must be >= 0"),
    ">0": (lambda v: v > 0, "must be > 0"),
    ">=1": (lambda v: v >= 1, "must be >= 1"),
    ">=2": (lambda v: v >= 2, "must be >= 2 (contrastive losses need two images a batch)"),
    ">=8": (lambda v: v >= 8, "must be >= 8 (the network downsamples the image 8 times)"),
    "[8,4096]": (
        lambda v: 8 <= v <= 4096,
        "must be in [8, 4096] (the network downsamples 8 times; a 4096 px image is 48 MiB decoded)",
    ),
    "(0,1]": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "[0,1]": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "[0,1)": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "[0,0.5]": (lambda v: 0 <= v <= 0.5, "must be in [0, 0.5]"),
}

# The metadata a config field carries beside its default, so that each fact about a key
# is written once, at the key: its range rule, its choices, whether a rerun may change it
# freely (it does not change what is learned), and whether it names a path.
RANGE = "range"
CHOICES = "choices"
NEUTRAL = "neutral"
PATH = "path"  # "input": read if the source needs it; "file": must exist when set


def _field(default: Any, factory: Callable[[], Any] | None, meta: dict[str, Any]) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def ranged(default: Any, rule: str, *, neutral: bool = False) -> Any:
    """A config field with a default and a range rule (a key of ``_RULES``), checked by
    ``range_problems`` before any work starts: ``lr: float = ranged(0.5, ">0")``."""
    if rule not in _RULES:
        raise ValueError(f"unknown range rule {rule!r}: one of {list(_RULES)}")
    return _field(default, None, {RANGE: rule, NEUTRAL: neutral})


def choice(
    default: Any,
    options: Sequence[str],
    *,
    factory: Callable[[], Any] | None = None,
    neutral: bool = False,
) -> Any:
    """A config field whose value (or, for a list, each item) is one of ``options``,
    checked by ``choice_problems``: ``head: str = choice("auto", ("auto", "bn", "plain"))``."""
    return _field(default, factory, {CHOICES: tuple(options), NEUTRAL: neutral})


def neutral(default: Any = None, *, factory: Callable[[], Any] | None = None) -> Any:
    """A config field (or a whole section) a rerun may change freely: where or how fast a
    stage runs, or what happens after training (``fassl.runs.settings``)."""
    return _field(default, factory, {NEUTRAL: True})


def path(*, must_exist: bool = True, neutral: bool = False) -> Any:
    """A config field naming a file or folder: recorded absolute (``absolute_paths``) and,
    with ``must_exist``, checked to exist when set (``path_problems``)."""
    return _field("", None, {PATH: "file" if must_exist else "input", NEUTRAL: neutral})


def _walk(cfg: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, field, value) of every field of ``cfg``, sections included, before
    the fields inside them."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        yield prefix + f.name, f, value
        if is_dataclass(value):
            yield from _walk(value, prefix + f.name + ".")


def keys_with(cfg: Any, meta: str) -> tuple[str, ...]:
    """The dotted keys whose field metadata sets ``meta`` (a section's key covers every
    key inside it)."""
    return tuple(key for key, f, _ in _walk(cfg) if f.metadata.get(meta))


def path_keys(cfg: Any, kind: str | None = None) -> tuple[str, ...]:
    """Keys naming paths (``path``), of one ``kind`` ("file" / "input") or all."""
    return tuple(
        key for key, f, _ in _walk(cfg) if f.metadata.get(PATH) and kind in (None, f.metadata[PATH])
    )


def get_dotted(cfg: Any, dotted: str) -> Any:
    """``cfg.a.b`` for ``"a.b"``."""
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def range_problems(cfg: Any) -> list[str]:
    """One message per key whose value is outside its range (empty: all fine); the rules
    are the fields' own (``ranged``), walked through every nested section."""
    problems = []
    for key, f, value in _walk(cfg):
        rule = f.metadata.get(RANGE)
        if rule is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        test, wording = _RULES[rule]
        if not math.isfinite(value) or not test(value):
            problems.append(f"config key '{key}' {wording}, got {value}")
    return problems


def choice_problems(cfg: Any) -> list[str]:
    """One message per key whose value (or list item) is not one of its choices."""
    problems = []
    for key, f, value in _walk(cfg):
        options = f.metadata.get(CHOICES)
        if options is None:
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            if item not in options:
                problems.append(f"config key '{key}': {item!r} is not one of {list(options)}")
    return problems


def structure_problems(cfg: Any) -> list[str]:
    """Keys whose values only make sense together."""
    problems = []
    if (arch := arch_problem(cfg.model.arch)) is not None:
        problems.append(f"config key 'model.arch': {arch}")
    if not cfg.probe.settings:
        problems.append("config key 'probe.settings' must list at least one probe")
    if cfg.temperature.tau_min > cfg.temperature.tau_max:
        problems.append(
            "config key 'temperature.tau_min' must be <= temperature.tau_max, got "
            f"{cfg.temperature.tau_min} > {cfg.temperature.tau_max}"
        )
    # the local crops' scale range (dino's always, swav's when it takes local crops)
    for section in ("dino", "swav"):
        crops = getattr(cfg, section)
        local = section == "dino" or crops.local_crops
        if local and crops.local_scale_min > crops.local_scale_max:
            problems.append(
                f"config key '{section}.local_scale_min' must be <= {section}.local_scale_max, "
                f"got {crops.local_scale_min} > {crops.local_scale_max}"
            )
    many_few = cfg.data.group_thresholds
    if len(many_few) != 2 or not 0 <= many_few[1] <= many_few[0]:
        problems.append(
            "config key 'data.group_thresholds' must be [frequent_above, rare_below] with "
            f"0 <= rare_below <= frequent_above, got {list(many_few)}"
        )
    return problems


def path_problems(cfg: Any) -> list[str]:
    """Files and folders the config needs that are not named or do not exist (checked by
    the commands, not by ``load_config``: a packaged recipe leaves data.root to the user,
    and a config may be written before its data is in place)."""
    problems = []
    if cfg.data.dataset in ROOT_DATASETS and not cfg.data.root:
        problems.append(
            f"config key 'data.root' must name the data folder (or archive) for "
            f"data.dataset={cfg.data.dataset}"
        )
    if cfg.data.dataset in ROOT_DATASETS and cfg.data.root:
        root = Path(cfg.data.root).expanduser()
        if not root.exists():
            problems.append(f"config key 'data.root': no such file or folder: {root}")
    for key in path_keys(cfg, "file"):
        value = get_dotted(cfg, key)
        if value and not Path(value).expanduser().exists():
            problems.append(f"config key '{key}': no such file: {value}")
    return problems


def absolute_path(value: str) -> str:
    """``value`` as an absolute path (``~`` expanded, links kept); empty stays empty."""
    return str(Path(value).expanduser().absolute()) if value else value


def absolute_paths(cfg: Any) -> Any:
    """The paths of ``cfg`` (``path`` fields) made absolute in place, so the
    config.yaml a run writes names the same files from any working directory: a later
    ``fassl eval`` elsewhere must not read another folder of the same relative name."""
    for key in path_keys(cfg):
        section, _, name = key.rpartition(".")
        owner = get_dotted(cfg, section)
        setattr(owner, name, absolute_path(getattr(owner, name)))
    return cfg


def check_paths(cfg: Any) -> Any:
    """The files and folders the config names exist (ConfigError naming the key); they
    are then made absolute (``absolute_paths``)."""
    problems = path_problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))
    return absolute_paths(cfg)
