"""Each name is declared once (fassl.registry) and everything that reads it agrees: the
loaded classes carry the names they are registered under, every arm's references are
arms and config keys, and what a sweep shares agrees with what a rerun checks."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any

import pytest

import fassl.compare.sweep as sweep
from fassl import registry
from fassl.compare.arms import run_config
from fassl.config import Config, load_config
from fassl.methods import METHODS
from fassl.rebalance import REWEIGHTERS
from fassl.runs.settings import settings_for
from fassl.validation import get_dotted, path_keys
from tests.helpers import tiny_config


def test_the_registry_loads_without_torch():
    code = "import sys, fassl.registry, fassl.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_loaded_classes_carry_their_registered_names():
    assert list(METHODS) == list(registry.METHOD_NAMES)
    assert all(cls.name == name for name, cls in METHODS.items())
    assert list(REWEIGHTERS) == list(registry.WEIGHTS)
    assert all(cls.name == name for name, cls in REWEIGHTERS.items())
    assert set(registry.ROOT_DATASETS) == {"folder", "splitfile", "tinyimagenet"}


def test_the_self_supervised_methods_train_from_scratch_without_labels(tmp_path):
    from fassl.methods import build_method

    cfg = tiny_config(tmp_path)
    for name in registry.SELF_SUPERVISED:
        assert not METHODS[name].needs_labels, name
        build_method(cfg, name)  # no init: nothing it starts from
    rest = set(registry.METHOD_NAMES) - set(registry.SELF_SUPERVISED)
    assert all(METHODS[n].needs_labels or n.startswith("fassl_") for n in rest)


@pytest.mark.slow
def test_every_arm_refers_to_arms_methods_and_keys_that_exist(tmp_path):
    file_keys = path_keys(Config(), "file")
    for arm in registry.ARMS.values():
        assert arm.method in (*registry.METHOD_NAMES, "fassl"), arm.name
        for other in (*arm.bases, arm.start_arm, arm.lead):
            assert other == "" or other in registry.ARMS, (arm.name, other)
        assert arm.weight is None or arm.weight in registry.WEIGHTS
        if arm.start_arm or arm.start_arm_key:
            assert arm.start_key in file_keys, arm.name  # the key takes the export's path
        if arm.start_arm_key:
            assert get_dotted(Config(), arm.start_arm_key) in registry.ARMS
        # the keys it sets are real keys with valid values: the arm's config loads
        cfg = tiny_config(tmp_path, *(f"{k}={v}" for k, v in arm.keys))
        run_config(cfg, arm.name, 0, tmp_path)


def _leaf_keys(section: Any, prefix: str) -> list[str]:
    keys = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            keys += _leaf_keys(value, f"{prefix}{f.name}.")
        elif isinstance(value, bool | int | float) and not isinstance(value, bool):
            keys.append(f"{prefix}{f.name}")
    return keys


def _one_key_per_section() -> list[str]:
    """A numeric key of every config section (and sub-section), swept below."""
    cfg, chosen = Config(), []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not dataclasses.is_dataclass(value) or f.name in sweep.NOT_SWEPT:
            continue
        sections = {k.rsplit(".", 1)[0] for k in _leaf_keys(value, f"{f.name}.")}
        for section in sorted(sections):
            chosen.append(next(k for k in _leaf_keys(value, f"{f.name}.") if k.startswith(section)))
    return chosen


def _other_value(cfg: Config, key: str) -> str:
    value = get_dotted(cfg, key)
    if isinstance(value, int):
        return str(value + 1)
    return str(value / 2 if value > 0 else 0.5)


@pytest.mark.parametrize("key", _one_key_per_section())
@pytest.mark.slow
def test_a_sweep_never_shares_a_stage_whose_settings_the_key_changes(tmp_path, key):
    """The sweep's sharing (sections a stage reads) and the rerun check (settings.json)
    are two readings of what a stage learns from: a key in a stage's settings must
    retrain that stage at every grid point, never share it."""
    base = tiny_config(tmp_path)
    values = [get_dotted(base, key), _other_value(base, key)]
    grid = f"{{{key}: [{values[0]}, {values[1]}]}}"
    try:
        cfg = load_config(None, [f"out_dir={tmp_path}", f"compare.grid={grid}"])
    except Exception:  # a value the key's rule refuses: nothing to sweep
        pytest.skip(f"{key}: no second valid value")
    (tmp_path / "config.yaml").write_text(sweep.to_yaml(cfg))
    points = sweep.plan(cfg, tmp_path)
    for stage, group in (("teacher", points[0].teacher_group), ("prototypes", None)):
        if stage == "prototypes":
            group = points[0].prototypes_group
        optim = getattr(cfg.pipeline, stage)
        method = "sdclr" if stage == "teacher" else "fassl_prototypes"
        reads = settings_for(cfg, method, optim)
        if key in reads:
            assert group is None, f"{stage} is shared across {key}, which its settings record"
