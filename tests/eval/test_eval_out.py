"""``fassl eval`` writes one folder per data set it evaluates on, or into ``--out``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from fassl.cli import main
from fassl.config import DataConfig
from fassl.names import EXPORT
from fassl.tools.common import data_slug
from tests.cli.test_hostile import TINY  # digits at 8x8, width 4: a run takes seconds


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["pretrain", "demo", *TINY, f"out_dir={out}"]) == 0
    return out / EXPORT


def evaluated(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def test_evals_on_other_data_get_their_own_folders(export, capsys) -> None:
    assert main(["eval", str(export), "data.split=0"]) == 0
    assert main(["eval", str(export), "data.split=1"]) == 0
    folders = sorted(p.name for p in export.parent.glob("eval-*"))
    assert len(folders) == 2 and not (export.parent / "eval").exists()
    assert folders[0].startswith("eval-digits-split0-")
    assert folders[1].startswith("eval-digits-split1-")
    # each folder holds the evaluation of its own data: the two splits group other classes
    groups = [evaluated(export.parent / f)["meta"]["groups"] for f in folders]
    assert groups[0] != groups[1]
    said = capsys.readouterr().out
    assert f"results in {export.parent / folders[1] / 'results.json'}" in said


def test_out_flag_names_the_folder(export, tmp_path, capsys) -> None:
    out = tmp_path / "mine"
    assert main(["eval", str(export), "--out", str(out)]) == 0
    assert evaluated(out)["checkpoint"] == str(export) and (out / "report.md").is_file()
    capsys.readouterr()
    assert main(["eval", str(export), "--out", str(out), f"out_dir={tmp_path / 'x'}"]) == 2
    assert "--out and an out_dir= override" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):  # argparse: --out takes a folder
        main(["eval", str(export), "--out", str(tmp_path / "file")])


def test_data_slug_is_stable_and_tells_data_apart(tmp_path) -> None:
    cfg = DataConfig(dataset="folder", root=str(tmp_path / "photos.tar.gz"))
    slug = data_slug(cfg)
    assert slug.startswith("folder-photos-split0-") and len(slug.rsplit("-", 1)[1]) == 6
    assert data_slug(replace(cfg, workers=4, cache_dir="/elsewhere")) == slug  # same images
    assert data_slug(replace(cfg, imbalance=10.0)) != slug
    assert data_slug(replace(cfg, root=str(tmp_path / "other" / "photos.tar.gz"))) != slug
    assert data_slug(DataConfig(dataset="digits")).startswith("digits-split0-")
