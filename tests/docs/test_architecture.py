"""docs/architecture.md's layer table is the import contract's picture: regenerated from
pyproject.toml here, it must equal what the page shows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "architecture_layers.py"


def test_the_layer_table_is_drawn_from_the_contract():
    spec = importlib.util.spec_from_file_location("architecture_layers", SCRIPT)
    assert spec is not None and spec.loader is not None
    layers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layers)
    page = layers.DOC.read_text()
    assert layers.render() in page, "run python scripts/architecture_layers.py"
    drawn = [m for layer in layers.layers() for m in layer]
    assert "cli" in drawn[:3] and "errors" in drawn[-3:]  # the top and the floor
