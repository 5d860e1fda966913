"""docs/tools.md's code that loads an export into torchvision's ResNet, run as written at
small widths and both stems, against the project's own backbone."""

from __future__ import annotations

import importlib
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from fassl.cli import main
from fassl.encoders import load_encoder
from fassl.methods import build_method
from fassl.train.checkpoint import export_encoder
from tests import torchvision_resnet
from tests.helpers import tiny_config

TOOLS = Path(__file__).resolve().parents[2] / "docs" / "tools.md"


def snippet() -> str:
    text = TOOLS.read_text()
    block = text.split("<!-- export-snippet:begin -->")[1].split("<!-- export-snippet:end -->")[0]
    return re.search(r"```python\n(.*?)```", block, re.S).group(1)


@pytest.fixture
def torchvision(monkeypatch):
    """The real torchvision when it imports, else the stand-in under its module names."""
    try:
        return importlib.import_module("torchvision.models.resnet")
    except Exception:  # PyPI's torchvision does not import beside this torch
        package = types.ModuleType("torchvision")
        models = types.ModuleType("torchvision.models")
        package.models, models.resnet = models, torchvision_resnet
        monkeypatch.setitem(sys.modules, "torchvision", package)
        monkeypatch.setitem(sys.modules, "torchvision.models", models)
        monkeypatch.setitem(sys.modules, "torchvision.models.resnet", torchvision_resnet)
        return torchvision_resnet


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize(
    ("arch", "width", "stem"),
    [("resnet18", 4, True), ("resnet18", 8, False), ("resnet50", 4, True)],
)
@pytest.mark.slow
def test_the_documented_code_loads_the_export_at_any_width(
    tmp_path, monkeypatch, torchvision, arch, width, stem
):
    cfg = tiny_config(
        tmp_path,
        f"model.arch={arch}",
        f"model.width={width}",
        f"model.cifar_stem={str(stem).lower()}",
    )
    torch.manual_seed(0)
    ckpt = tmp_path / "encoder.safetensors"
    export_encoder(build_method(cfg, "simclr"), cfg, ckpt)
    assert main(["export", str(ckpt), "--out", str(tmp_path / "export")]) == 0
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet(), "docs/tools.md", "exec"), scope)  # the page's code, as written
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = load_encoder(ckpt).backbone.eval()(x)
        torch.testing.assert_close(scope["net"](x), expected)
        torch.testing.assert_close(scope["scripted"](x), expected)
