"""A run never reports on other data: its input paths are recorded absolute, and
``fassl eval`` with the run's own config checks that the data it finds is the data the
encoder was trained on (image count and channel statistics)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from fassl.cli import main
from fassl.names import EXPORT, SETTINGS
from tests.cli.test_hostile import TINY
from tests.data_fixtures import write_class_folder

COUNTS = {"a": 40, "b": 20, "c": 12}


@pytest.fixture
def trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(the run folder, the data folder): a run trained with a relative data.root."""
    work = tmp_path / "work"
    write_class_folder(work / "data", COUNTS, size=16)
    monkeypatch.chdir(work)
    run = tmp_path / "run"
    argv = [
        "pretrain",
        "demo",
        *TINY,
        "data.dataset=folder",
        "data.root=data",
        "data.longtail=none",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"out_dir={run}",
    ]
    assert main(argv) == 0
    return run, work / "data"


def test_the_run_records_its_data_absolute_and_eval_finds_it_from_anywhere(
    trained, tmp_path, monkeypatch, capsys
):
    run, data = trained
    recorded = yaml.safe_load((run / "config.yaml").read_text())["data"]["root"]
    assert recorded == str(data.absolute())
    assert json.loads((run / SETTINGS).read_text())["data.root"] == str(data.absolute())
    # another folder of the same relative name elsewhere is never read
    elsewhere = tmp_path / "elsewhere"
    write_class_folder(elsewhere / "data", {"x": 40, "y": 40}, size=16, seed=3)
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["eval", str(run / EXPORT)]) == 0
    meta = json.loads(next(run.glob("eval*/results.json")).read_text())["meta"]
    assert meta["classes"] == sorted(COUNTS)  # the run's own data, not the other folder


def test_eval_refuses_a_data_folder_that_changed(trained, capsys):
    run, data = trained
    shutil.rmtree(data / "a")
    write_class_folder(data, {"a": 40}, size=16, seed=7)  # other images, the same count
    capsys.readouterr()
    assert main(["eval", str(run / EXPORT)]) == 2
    err = capsys.readouterr().err
    assert "was trained on" in err and "the folder changed" in err and "Traceback" not in err
    # given on purpose, other data is evaluated
    assert main(["eval", str(run / EXPORT), f"data.root={data}"]) == 0


def test_a_run_recorded_with_a_relative_path_resumes(trained, capsys):
    run, _ = trained
    settings = json.loads((run / SETTINGS).read_text())
    settings["data.root"] = "data"  # as runs recorded it before paths were absolute
    (run / SETTINGS).write_text(json.dumps(settings))
    argv = ["pretrain", str(run / "config.yaml"), "data.root=data"]
    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr().err
