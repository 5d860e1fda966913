"""scripts/reproduce_paper_width.sh: its syntax, and that it refuses missing data at once.

The script spends minutes of a GPU machine once started, so a wrong data path must stop
it before any run begins, with a message that names the variable to set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "reproduce_paper_width.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run_script(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """The script with only ``env`` set of its variables, its runs under ``tmp_path``."""
    base = {k: v for k, v in os.environ.items() if k not in ("DATA_ROOT", "SPLITS", "TINY")}
    return subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "runs")],
        cwd=ROOT,
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def splits_folder(tmp_path: Path, missing: str = "") -> Path:
    """A folder with the index file names the script checks for (contents not read)."""
    folder = tmp_path / "splits"
    folder.mkdir()
    names = ["trainIdxList.npy", "valIdxList.npy", "cifar10_train_labels.npy"]
    for name in [*names, "split1_D_i.npy", "split1_S_b.npy"]:
        if name != missing:
            (folder / name).write_bytes(b"")
    return folder


def test_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_refuses_unset_data_root(tmp_path: Path) -> None:
    result = run_script(tmp_path, SPLITS=str(splits_folder(tmp_path)))
    assert result.returncode != 0
    assert "DATA_ROOT is not set" in result.stderr
    assert not (tmp_path / "runs").exists()  # stopped before anything was started


def test_refuses_missing_data_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "cifar10-jpeg.tar.gz"
    result = run_script(tmp_path, DATA_ROOT=str(missing), SPLITS=str(splits_folder(tmp_path)))
    assert result.returncode != 0
    assert f"DATA_ROOT={missing} does not exist" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_refuses_unset_splits(tmp_path: Path) -> None:
    data = tmp_path / "cifar10-jpeg.tar.gz"
    data.write_bytes(b"")
    result = run_script(tmp_path, DATA_ROOT=str(data))
    assert result.returncode != 0
    assert "SPLITS is not set" in result.stderr


def test_refuses_splits_without_split1(tmp_path: Path) -> None:
    data = tmp_path / "cifar10-jpeg.tar.gz"
    data.write_bytes(b"")
    splits = splits_folder(tmp_path, missing="split1_D_i.npy")
    result = run_script(tmp_path, DATA_ROOT=str(data), SPLITS=str(splits))
    assert result.returncode != 0
    assert "split1_D_i.npy not found" in result.stderr
    assert not (tmp_path / "runs").exists()
