"""``fassl tables`` names every unfinished run it leaves out and the files each lacks."""

from __future__ import annotations

import json
from pathlib import Path

from fassl.cli import main
from fassl.compare.run import expected_files, tables_notes, unfinished_runs
from fassl.config import load_config, to_yaml
from fassl.names import EXPORT
from fassl.recipes import resolve_recipe

ROW = {"all": 50.0, "rare": 40.0, "medium": 50.0, "frequent": 60.0, "std": 8.16}
STAGE_EXPORTS = [f"{stage}/{EXPORT}" for stage in ("teacher", "prototypes", "rebalance")]


def finished(out: Path, arm: str, seed: int) -> None:
    run = out / arm / f"seed{seed}"
    run.mkdir(parents=True)
    (run / EXPORT).write_text("")
    (run / "results.json").write_text(json.dumps({"standard": ROW}))


def test_an_unfinished_pipeline_arm_is_named_with_its_missing_files(tmp_path, capsys) -> None:
    finished(tmp_path, "simclr", 0)
    (tmp_path / "fassl" / "seed0" / "teacher").mkdir(parents=True)
    (tmp_path / "fassl" / "seed0" / "teacher" / EXPORT).write_text("")
    assert main(["tables", str(tmp_path)]) == 0
    said = capsys.readouterr()
    missing = "fassl/seed0 (missing prototypes/encoder.safetensors, "
    missing += "rebalance/encoder.safetensors, results.json)"
    assert f"fassl tables: unfinished, left out: {missing}" in said.err
    text = (tmp_path / "comparison.md").read_text()
    assert f"- 1 finished run found in {tmp_path}\n" in text
    assert f"- left out, 1 unfinished run: {missing}\n" in text
    assert missing in said.out  # the command prints comparison.md
    assert "| simclr | 1 |" in text and "| fassl |" not in text


def test_runs_the_comparison_plans_but_never_started_are_named(tmp_path, capsys) -> None:
    cfg = load_config(resolve_recipe("demo"), ["compare.methods=[simclr,fassl,fassl_phi1]"])
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    finished(tmp_path, "simclr", 0)
    finished(tmp_path, "simclr", 1)
    (tmp_path / "fassl_phi1" / "seed0").mkdir(parents=True)
    described = [u.describe() for u in unfinished_runs(tmp_path)]
    assert described == [
        "fassl/seed0 (not started)",
        "fassl_phi1/seed0 (missing rebalance/encoder.safetensors, results.json)",
        "fassl/seed1 (not started)",
        "fassl_phi1/seed1 (not started)",
    ]
    # the other FASSL arms share fassl's teacher and stage 1: they train stage 2 alone
    assert expected_files(tmp_path, "fassl", 0) == [*STAGE_EXPORTS, "results.json"]
    assert expected_files(tmp_path, "simclr", 0) == [EXPORT, "results.json"]
    notes = tables_notes(tmp_path, [{}, {}], unfinished_runs(tmp_path))
    assert notes[0] == f"2 finished runs found in {tmp_path}"
    assert notes[1].startswith("left out, 4 unfinished runs: fassl/seed0 (not started); ")


def test_no_finished_run_names_the_unfinished_ones(tmp_path, capsys) -> None:
    (tmp_path / "byol" / "seed3").mkdir(parents=True)
    assert main(["tables", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no finished runs" in err
    assert "byol/seed3 (missing encoder.safetensors, results.json)" in err


def test_a_run_of_no_registered_arm_is_a_row_of_its_own(tmp_path, capsys) -> None:
    """A script may train runs beside the arms (the paper-width script's bcl_d_continued)
    in a comparison's folder: the tables show it as it is."""
    finished(tmp_path, "sdclr", 0)
    finished(tmp_path, "bcl_d_continued", 0)
    assert main(["tables", str(tmp_path)]) == 0
    text = (tmp_path / "comparison.md").read_text()
    assert "| bcl_d_continued | 1 |" in text and "| sdclr | 1 |" in text
