"""The Python API is as safe as the command line: one pixel convention, clear errors for
wrong input, the run folder's lock and settings check, nothing given changed in place,
and the caller's random streams left as they were."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import fassl
from fassl.errors import ConfigError, DataError, RunConflict
from tests.api.test_api import TINY
from tests.helpers import coloured_split


@pytest.fixture(scope="module")
def split():
    return coloured_split([40, 16, 8], size=16)


def test_float_pixels_are_0_to_1_everywhere_and_0_to_255_is_refused(split):
    as_float = split.images.float() / 255
    data = fassl.tensor_data(as_float)
    assert torch.equal(data.pretrain.images, split.images)  # exactly the uint8 images
    with pytest.raises(DataError, match=r"float pixels must be in \[0, 1\].*uint8"):
        fassl.tensor_data(split.images.float())  # 0..255 as float: never clipped to white
    with pytest.raises(DataError, match="finite"):
        fassl.tensor_data(torch.full((4, 3, 16, 16), float("nan")))
    with pytest.raises(DataError, match=r"integer pixels must be in 0\.\.255"):
        fassl.tensor_data(split.images.long() * 4)


def test_embed_reads_floats_in_0_1_as_the_same_images(split):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4)).eval()
    data = fassl.tensor_data(split.images)
    from_uint8 = fassl.embed(net, split.images[:6], data)
    from_float = fassl.embed(net, split.images[:6].float() / 255, data)
    from_numpy = fassl.embed(net, split.images[:6].numpy(), data)
    assert torch.allclose(from_uint8, from_float) and torch.allclose(from_uint8, from_numpy)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        fassl.embed(net, split.images[:6].float(), data)
    with pytest.raises(DataError, match=r"\(N, 3, H, W\)"):
        fassl.embed(net, split.images[0], data)
    with pytest.raises(DataError, match="batch_size"):
        fassl.embed(net, split.images[:6], data, batch_size=0)


@pytest.mark.parametrize(
    ("images", "labels", "kwargs", "message"),
    [
        (None, None, {}, "no images"),
        (torch.empty(0, 3, 16, 16, dtype=torch.uint8), None, {}, "empty"),
        ([], None, {}, "no images"),
        ("not images", None, {}, "PIL image, a numpy array or a tensor"),
        ("split", "all -1", {}, "labels=None"),
        ("split", "floats", {}, "integer class ids"),
        ("split", "strings", {}, "integer class ids"),
        ("split", None, {"image_size": 0}, r"image_size must be an integer in \[8, 4096\]"),
        ("split", "ok", {"classes": ["a", "b"]}, "classes names only 2"),
        ("split", "ok", {"test": "outside"}, "test labels go up to 7"),
    ],
)
def test_api_mistakes_are_one_clear_data_error(split, images, labels, kwargs, message):
    n = len(split.labels)
    if isinstance(images, str) and images == "split":
        images = split.images
    elif isinstance(images, str):
        images = [images]
    labels = {
        None: None,
        "ok": split.labels,
        "all -1": torch.full((n,), -1),
        "floats": split.labels.float() + 0.5,
        "strings": np.array(["a"] * n),
    }[labels]
    if kwargs.get("test") == "outside":
        kwargs = {"test": (split.images[:4], torch.tensor([0, 1, 2, 7]))}
    with pytest.raises(DataError, match=message):
        fassl.tensor_data(images, labels, **kwargs)


def test_float_labels_with_integer_values_are_taken_exactly(split):
    data = fassl.tensor_data(split.images, split.labels.double())
    assert data.num_classes == 3 and data.labeled


def test_tensor_data_leaves_the_callers_config_as_it_was(split):
    cfg = fassl.make_config(None, "data.longtail=none")
    before = copy.deepcopy(cfg)
    fassl.tensor_data(split.images, split.labels, cfg=cfg)
    assert cfg == before


def test_make_config_leaves_a_none_key_at_its_default():
    assert fassl.make_config(None, out_dir=None).out_dir == fassl.make_config(None).out_dir


def test_data_none_and_overrides_beside_cfg_are_refused(split):
    with pytest.raises(DataError, match=r"fassl\.tensor_data"):
        fassl.fit("simclr", None, *TINY)  # type: ignore[arg-type]
    data = fassl.tensor_data(split.images)
    cfg = fassl.make_config(None, "method=simclr", *TINY)
    with pytest.raises(ConfigError, match="not both"):
        fassl.fit("simclr", data, "optim.epochs=3", cfg=cfg)
    bad = copy.deepcopy(cfg)
    bad.optim.batch_size = 0  # a hand-edited config is checked like a loaded one
    with pytest.raises(ConfigError, match=r"optim\.batch_size"):
        fassl.fit("simclr", data, cfg=bad)
    with pytest.raises(DataError, match="no labels"):
        fassl.probe(torch.nn.Identity(), data, *TINY)


def test_fit_into_a_run_with_other_settings_is_a_conflict_and_keeps_the_random_stream(
    split, tmp_path
):
    data = fassl.tensor_data(split.images)
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    fassl.fit("simclr", data, *TINY, out_dir=tmp_path / "run")
    assert torch.equal(torch.rand(3), expected)  # the caller's stream, untouched
    with pytest.raises(RunConflict, match=r"optim\.epochs 1 -> 2"):
        fassl.fit("simclr", data, *TINY, "optim.epochs=2", out_dir=tmp_path / "run")
