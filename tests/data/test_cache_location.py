"""Where decoded sets are cached: data.cache_dir, whose default follows XDG_CACHE_HOME."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fassl.config import DataConfig
from fassl.data.files import cache
from fassl.data.sources.folder import load_stored
from tests.data_fixtures import save_image

DEFAULT = DataConfig().cache_dir


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home folder of the test's own, so ``~`` never means the user's."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_default_cache_follows_xdg_cache_home(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root(DEFAULT) == tmp_path / "xdg" / "fassl" / "decoded"


@pytest.mark.parametrize("value", [None, "", "relative/cache"])
def test_default_cache_without_a_usable_xdg_cache_home_is_under_home(
    home: Path, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    # unset, empty, or relative (which the XDG rule says to ignore)
    if value is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", value)
    assert cache.cache_root(DEFAULT) == home / ".cache" / "fassl" / "decoded"


def test_an_explicit_cache_dir_wins_over_xdg_cache_home(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root(tmp_path / "mine") == tmp_path / "mine" / "decoded"
    assert cache.cache_root("~/elsewhere") == home / "elsewhere" / "decoded"


def test_a_folder_is_cached_under_xdg_cache_home(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "images"
    save_image(root / "a.png", np.zeros((8, 8, 3), np.uint8))
    cfg = DataConfig(dataset="folder", root=str(root), labeled=False, image_size=8)
    data = load_stored(cfg, root)
    assert len(data) == 1 and str(tmp_path / "xdg" / "fassl" / "store") in data.report[0]
    assert list((tmp_path / "xdg" / "fassl" / "store").glob("*/*.json"))
    assert not (home / ".cache").exists()
