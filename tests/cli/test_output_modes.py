"""Every output gets the mode a plain open() gives (0666 less the umask), whoever wrote it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fassl import files
from fassl.data.files.store import build_store
from fassl.train.checkpoint import save_checkpoint
from tests.data_fixtures import save_image


@pytest.fixture(params=[0o022, 0o027])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def plain_open_mode(folder: Path) -> int:
    probe = folder / "plain.txt"
    probe.write_text("x")
    return mode(probe)


def test_encoders_checkpoints_and_text_outputs_share_one_mode(tmp_path: Path, umask: int) -> None:
    expected = 0o666 & ~umask
    assert plain_open_mode(tmp_path) == expected == files.output_mode()
    save_checkpoint(tmp_path / "encoder.safetensors", {"w": torch.ones(2)}, {"epoch": 1})
    save_checkpoint(tmp_path / "checkpoints" / "last.safetensors", {"w": torch.ones(2)}, {})
    files.write_text(tmp_path / "report.md", "# report\n")
    with files.OutputSet(tmp_path / "export") as out:  # as `fassl export` writes
        out.write_with("backbone.safetensors", lambda p: save_file({"w": torch.ones(1)}, str(p)))
        out.write_text("backbone.json", "{}\n")
    written = [
        tmp_path / "encoder.safetensors",
        tmp_path / "checkpoints" / "last.safetensors",
        tmp_path / "report.md",
        tmp_path / "export" / "backbone.safetensors",
        tmp_path / "export" / "backbone.json",
    ]
    assert {p.name: oct(mode(p)) for p in written} == {p.name: oct(expected) for p in written}


def test_stored_shards_get_the_same_mode(tmp_path: Path, umask: int) -> None:
    save_image(tmp_path / "photos" / "a.png", np.zeros((4, 4, 3), np.uint8))
    built = build_store(tmp_path / "s", tmp_path / "photos", ["a.png"], 4, 1, False)
    shards = [tmp_path / "s" / f"{n}{suffix}" for n in built.names for suffix in (".npy", ".json")]
    assert {oct(mode(p)) for p in shards} == {oct(0o666 & ~umask)}
    assert not list((tmp_path / "s").glob(".*tmp*"))  # no temporary file left behind


def test_umask_without_proc_is_read_once_and_restored(
    monkeypatch: pytest.MonkeyPatch, umask: int
) -> None:
    monkeypatch.setattr(files, "_umask_from_proc", lambda: None)
    files._umask_by_setting.cache_clear()
    try:
        assert files.output_mode() == 0o666 & ~umask
        assert os.umask(umask) == umask  # left as it was
    finally:
        files._umask_by_setting.cache_clear()
