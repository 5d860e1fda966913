"""The Python face: every documented name resolves, the layers load lazily, and the plain
functions train and probe on tensors and Datasets of one's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fassl
from fassl.errors import ConfigError, DataError
from tests.helpers import coloured_split

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"
TINY = (
    "model.width=4",
    "model.proj_hidden=16",
    "model.proj_dim=8",
    "optim.epochs=1",
    "optim.batch_size=8",
    "optim.warmup_epochs=0",
    "train.device=cpu",
    "train.precision=fp32",
    "train.progress=false",
    "probe.fast_epochs=2",
    "probe.knn_k=3",
)


def test_every_export_resolves_and_is_documented():
    text = DOCS.read_text()
    for name in fassl.__all__:
        if name == "__version__":
            continue
        assert getattr(fassl, name) is not None, name
        assert f"fassl.{name}" in text or f"`{name}" in text, f"docs/api.md does not list {name}"
    with pytest.raises(AttributeError):
        fassl.no_such_piece  # noqa: B018


@pytest.mark.parametrize(
    ("module", "absent"),
    [("fassl.runs.pipeline", "fassl.cli"), ("fassl.config", "torch"), ("fassl.recipes", "torch")],
)
@pytest.mark.slow
def test_imports_point_down_the_layers(module, absent):
    code = f"import sys, {module}; print({absent!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"importing {module} loads {absent}"


def test_tensor_data_with_and_without_labels():
    split = coloured_split([40, 16, 8], size=16)
    data = fassl.tensor_data(split.images, split.labels, classes=["r", "g", "b"])
    assert data.labeled and data.classes == ["r", "g", "b"]
    # used as found: every image not held out for the test is pre-training data
    assert len(data.pretrain) + len(data.test) == 64 and len(data.val) > 0
    assert data.groups == {"frequent": [0], "medium": [1], "rare": [2]}
    unlabeled = fassl.tensor_data(split.images)
    assert not unlabeled.labeled and len(unlabeled.pretrain) == 64
    with pytest.raises(DataError, match="one entry per image"):
        fassl.tensor_data(split.images, split.labels[:3])


def test_dataset_data_takes_pil_images_and_pairs():
    class Pairs(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 30

        def __getitem__(self, i: int):
            pixels = np.full((20, 24, 3), 10 * (i % 3), dtype=np.uint8)
            return Image.fromarray(pixels), i % 3

    data = fassl.dataset_data(Pairs(), image_size=16)
    assert data.pretrain.images.shape[1:] == (3, 16, 16) and data.num_classes == 3
    floats = [torch.rand(3, 16, 16) for _ in range(10)]
    assert fassl.tensor_data(floats).pretrain.images.dtype == torch.uint8


def test_fit_embed_and_probe_on_tensors(tmp_path):
    split = coloured_split([40, 16, 8], size=16)
    data = fassl.tensor_data(split.images, split.labels)
    method = fassl.fit("simclr", data, *TINY, out_dir=tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "last.safetensors").is_file()
    feats = fassl.embed(method.backbone, split.images[:5], data)
    assert feats.shape == (5, 32)
    results = fassl.probe(method.backbone, data, *TINY)
    assert {"standard", "few_shot", "knn"} <= set(results)
    with pytest.raises(ConfigError, match="unknown method"):
        fassl.fit("nope", data)


def test_make_config_takes_keyword_keys():
    cfg = fassl.make_config("demo", "optim.epochs=3", model__width=8, train__progress=False)
    assert cfg.optim.epochs == 3 and cfg.model.width == 8 and cfg.train.progress is False
    with pytest.raises(ConfigError, match=r"model\.widht"):
        fassl.make_config(None, model__widht=8)
