"""The memory check: what a run holds per process, refused only when it will not fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fassl.data import memory
from fassl.data.datasets import Split
from fassl.data.files.store import StoreImages
from fassl.errors import DataError
from tests.helpers import tiny_data


def test_held_counts_images_in_memory_once_and_features(monkeypatch) -> None:
    data = tiny_data()  # 42 pretrain images of 3x8x8, pool/few-shot/val/test tensors
    need = memory.held(data, feature_dim=16)
    splits = {id(getattr(data, n).images): getattr(data, n).images for n in memory.SPLITS}
    assert need.images == sum(t.numel() for t in splits.values())  # uint8: a byte each
    assert need.features == 42 * 16 * 4 and need.mapped == 0


def test_mapped_images_are_not_held(tmp_path) -> None:
    data = tiny_data()
    size, in_memory = data.image_size, memory.held(data, 8).images
    mapped = StoreImages([], [], size, np.arange(len(data.pretrain)))  # only its length is read
    data.pretrain = Split(mapped, data.pretrain.labels)  # type: ignore[arg-type]
    need = memory.held(data, 8)
    assert need.mapped == len(data.pretrain) * 3 * size * size
    assert need.images == in_memory - need.mapped


def test_a_run_that_does_not_fit_is_refused_naming_what_would(monkeypatch) -> None:
    data = tiny_data()
    need = memory.held(data, 64)
    assert memory.check_fits(data, 64, available=need.total) == need  # exactly fits
    with pytest.raises(
        DataError,
        match=r"would hold .* GiB in each of 1 process .*images in "
        r"memory .*smaller data.max_memory_gb",
    ):
        memory.check_fits(data, 64, available=need.total - 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks on this machine: twice as much
    with pytest.raises(DataError, match=r"each of 2 processes.*fewer processes on this machine"):
        memory.check_fits(data, 64, available=need.total)


def test_the_trainer_checks_before_any_step(tmp_path, monkeypatch) -> None:
    from fassl.methods import build_method
    from fassl.runtime import Runtime
    from fassl.train.loop import Trainer
    from tests.helpers import tiny_config

    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)
    cfg = tiny_config(tmp_path)
    torch.manual_seed(0)
    with pytest.raises(DataError, match=r"more than the 0\.00 GiB this machine has available"):
        Trainer(
            build_method(cfg, "simclr"), tiny_data(), cfg, cfg.optim, tmp_path, Runtime.cpu(), "s"
        )
