"""Runs, ranks, run files and messages that must fail in one clear line, or work.

Ranks of a torchrun run that disagree (their data, their settings) stop together naming
the rank and what differs, and a rank killed with SIGKILL is named by the others in one
line; a damaged results.json is an unfinished run, not a traceback; a run folder that
lost its settings.json is still checked (against its config.yaml and checkpoint) and
gets the record back; a checkpoint of another format and a one-image folder are told
what they are.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import save_file

from fassl import distributed
from fassl.cli import main
from fassl.compare import arms
from fassl.compare.run import collect_runs, unfinished_runs
from fassl.config import load_config, to_yaml
from fassl.data import Split
from fassl.errors import CheckpointError, DamagedFile, DataError, RanksDiffer, RunConflict
from fassl.names import CONFIG, EXPORT, LAST, SETTINGS
from fassl.report import read_json_object
from fassl.runs.settings import check_stage, record_settings
from fassl.runs.stage import check_batch_size, data_fingerprint
from fassl.train.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from tests.cli.test_torchrun_cli import TINY as TORCHRUN_TINY
from tests.helpers import tiny_config, tiny_data

REPO = Path(__file__).resolve().parents[2]
ROW = {"all": 50.0, "rare": 40.0, "medium": 50.0, "frequent": 60.0, "std": 8.16}


# ---- messages ------------------------------------------------------------------------------


def test_a_checkpoint_of_another_format_version_names_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "last.safetensors"
    meta = {"format": "fassl-checkpoint-2", "meta": json.dumps({"epoch": 0})}
    save_file({"a": torch.zeros(1)}, str(path), metadata=meta)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "fassl-checkpoint-2" in message and FORMAT in message and str(path) in message
    assert "not a fassl checkpoint" not in message


def test_a_one_image_folder_is_told_it_has_too_few_images(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    cfg = tiny_config(tmp_path, "data.dataset=folder", f"data.root={folder}")
    data = tiny_data()
    data.pretrain = Split(data.pretrain.images[:1], data.pretrain.labels[:1])
    with pytest.raises(DataError) as caught:
        check_batch_size(cfg, data, cfg.optim)
    message = str(caught.value)
    assert str(folder) in message and "too few images" in message and "at least 2" in message
    assert "at most" not in message and "batch_size" not in message


# ---- damaged results.json --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "what"),
    [
        ("", "empty"),
        ('{"standard": {"all": 5', "truncated"),
        ("[1, 2]", "list, not an object"),
        ("{'standard': 1}", "not valid JSON"),
    ],
)
def test_a_damaged_results_file_is_named_with_what_is_wrong(
    tmp_path: Path, content: str, what: str
) -> None:
    path = tmp_path / "results.json"
    path.write_text(content)
    with pytest.raises(DamagedFile) as caught:
        read_json_object(path)
    assert str(path) in str(caught.value) and what in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


def _run(out: Path, arm: str, seed: int, results: str) -> Path:
    run = out / arm / f"seed{seed}"
    run.mkdir(parents=True)
    (run / EXPORT).write_text("")
    (run / "results.json").write_text(results)
    return run / "results.json"


@pytest.mark.parametrize("damaged", ["", '{"standard": {"all": 5', '["standard"]'])
def test_tables_left_out_a_damaged_results_file_as_unfinished(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damaged: str
) -> None:
    _run(tmp_path, "simclr", 0, json.dumps({"standard": ROW}))
    bad = _run(tmp_path, "sdclr", 0, damaged)
    assert [r["method"] for r in collect_runs(tmp_path)] == ["simclr"]
    assert [u.run for u in unfinished_runs(tmp_path)] == ["sdclr/seed0"]
    assert main(["tables", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "sdclr/seed0" in x)
    assert line.startswith("fassl tables: unfinished, left out: sdclr/seed0 (")
    assert str(bad) in line and "damaged" in line and "Traceback" not in err
    text = (tmp_path / "comparison.md").read_text()
    assert "| simclr | 1 |" in text and "| sdclr |" not in text


def test_tables_with_only_damaged_results_names_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _run(tmp_path, "simclr", 0, "")
    assert main(["tables", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("fassl: error:") == 1 and str(bad) in err and "empty" in err


def test_a_compare_rerun_probes_a_run_with_damaged_results_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny_config(tmp_path / "simclr" / "seed0", "method=simclr")
    bad = _run(tmp_path, "simclr", 0, '{"standard": ')
    trained: list[str] = []

    def train(c: Any, rt: Any, data: Any) -> dict:
        trained.append(c.out_dir)
        return {"standard": ROW}

    monkeypatch.setattr(arms, "run_pretrain", train)
    assert arms.run_arm(cfg, "simclr", tiny_data(), None) == {"standard": ROW}  # type: ignore[arg-type]
    assert trained == [cfg.out_dir]
    assert str(bad) in capsys.readouterr().err
    # a readable file is reused, as before
    bad.write_text(json.dumps({"standard": ROW, "seed": 0}))
    assert arms.run_arm(cfg, "simclr", tiny_data(), None)["seed"] == 0  # type: ignore[arg-type,index]
    assert len(trained) == 1


# ---- a run folder without settings.json -------------------------------------------------------


def _trained_folder(run: Path, *overrides: str, export: bool = False) -> None:
    """A stage folder as training leaves it: config.yaml from its start, a checkpoint (or
    an export), settings.json deleted."""
    cfg = tiny_config(run, *overrides)
    run.mkdir(parents=True)
    (run / CONFIG).write_text(to_yaml(cfg))
    meta = {"stage": run.name, "method": cfg.method, "model": {"width": cfg.model.width}}
    save_checkpoint(run / LAST, {"model/w": torch.zeros(2)}, meta | {"epochs": cfg.optim.epochs})
    if export:
        (run / EXPORT).write_text("")


def test_a_rerun_without_settings_json_is_checked_against_config_yaml(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _trained_folder(run, "optim.lr=0.05")
    cfg = tiny_config(run, "optim.lr=0.2")
    with pytest.raises(RunConflict) as caught:
        check_stage(cfg, cfg.method, cfg.optim, run)
    message = str(caught.value)
    assert "optim.lr 0.05 -> 0.2" in message and CONFIG in message and SETTINGS in message
    assert "--restart" in message
    same = tiny_config(run, "optim.lr=0.05", "train.progress=true")  # a neutral key
    check_stage(same, same.method, same.optim, run)


def test_a_finished_stage_without_settings_json_is_checked_too(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _trained_folder(run, "simclr.temperature=0.2", export=True)
    cfg = tiny_config(run, "simclr.temperature=0.5")
    with pytest.raises(RunConflict, match=r"simclr\.temperature 0\.2 -> 0\.5"):
        check_stage(cfg, cfg.method, cfg.optim, run)


def test_without_config_yaml_the_checkpoint_record_is_compared(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _trained_folder(run)
    (run / CONFIG).unlink()
    cfg = tiny_config(run, "model.width=8")
    with pytest.raises(RunConflict, match=r"checkpoints/last.*model\.width 4 -> 8"):
        check_stage(cfg, cfg.method, cfg.optim, run)
    longer = tiny_config(run, "optim.epochs=3")
    with pytest.raises(RunConflict, match=r"optim\.epochs 2 -> 3"):
        check_stage(longer, longer.method, longer.optim, run)


def test_settings_json_is_written_again_when_missing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _trained_folder(run)
    cfg = tiny_config(run)
    settings = check_stage(cfg, cfg.method, cfg.optim, run)
    record_settings(run, settings)
    assert json.loads((run / SETTINGS).read_text())["optim.lr"] == cfg.optim.lr
    # from here on the record itself refuses a change, whatever config.yaml says
    (run / CONFIG).unlink()
    other = tiny_config(run, "optim.lr=0.3")
    with pytest.raises(RunConflict, match=r"optim\.lr 0\.05 -> 0\.3"):
        check_stage(other, other.method, other.optim, run)


# ---- ranks that disagree: the check itself, on two spawned processes -------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _check_worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    os.environ |= {"RANK": str(rank), "WORLD_SIZE": "2"}
    distributed.init_from_env("cpu")
    said = []
    try:
        data = tiny_data()
        distributed.check_same("data", data_fingerprint(data))  # the same: passes
        said.append("same")
        if rank == 1:
            data.pretrain.images[3] = 255 - data.pretrain.images[3]
        try:
            distributed.check_same("data", data_fingerprint(data), "hint")
        except RanksDiffer as err:
            said.append(str(err))
        cfg = load_config(None, ["optim.lr=0.2" if rank == 1 else "optim.lr=0.1"])
        try:
            distributed.check_same("settings", {"optim.lr": cfg.optim.lr, "seed": cfg.seed})
        except RanksDiffer as err:
            said.append(str(err))
    finally:
        Path(out, f"rank{rank}.json").write_text(json.dumps(said))
        dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_that_hold_other_data_or_settings_all_fail_naming_them(tmp_path: Path) -> None:
    mp.spawn(_check_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # every rank fails, with the same line
    same, data, settings = ranks[0]
    assert same == "same"
    assert data.startswith("the processes of this run differ in their data: rank 1 against")
    assert "pre-training image bytes" in data and "(hint)" in data and "\n" not in data
    assert "pre-training labels" not in data  # only what differs
    assert "optim.lr 0.1 on rank 0, 0.2 on rank 1" in settings and "seed" not in settings


def test_a_lost_connection_is_told_from_other_errors() -> None:
    gloo = "[../gloo/transport/tcp/pair.cc:545] Read error 127.0.0.1:1: Connection reset by peer"
    assert distributed.is_lost_peer(RuntimeError(gloo))
    assert not distributed.is_lost_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not distributed.is_lost_peer(ValueError("Connection reset by peer"))


def test_a_sigterm_while_announcing_a_stop_does_not_cut_it(monkeypatch) -> None:
    """A rank whose collective failed announces it in the store while torchrun already
    stops the group: the SIGTERM that arrives then must not raise from the handler."""
    written: list[str] = []

    class Store:
        def set(self, key: str, value: str) -> None:
            os.kill(os.getpid(), signal.SIGTERM)  # torchrun's, mid-write
            written.append(value)

    def terminate(signum: int, frame: object) -> None:
        raise AssertionError("the SIGTERM reached the command's handler")

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    monkeypatch.setattr(distributed, "_store", Store)
    signal.signal(signal.SIGTERM, terminate)
    try:
        distributed.announce_stop(distributed.FAILED)
        assert written == [distributed.FAILED]
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ---- under torchrun: the command a user types ----------------------------------------------

TINY = (*TORCHRUN_TINY, "optim.batch_size=16")  # the torchrun tests' settings
HUNG = "forcefully"  # torchrun's words when a worker did not end on SIGTERM


def torchrun(out: Path, rank1: str, *args: str) -> tuple[int, str]:
    """``fassl pretrain demo`` on two processes, rank 1 changed as ``rank1`` says
    (tests/rank1_cli.py); the exit status and everything printed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--standalone", "-m", "tests.rank1_cli", "pretrain", "demo", *TINY, *args]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env |= {"FASSL_TEST_RANK1": rank1}
    run = subprocess.run(
        [*cmd, f"out_dir={out}"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=180, check=False,
    )  # fmt: skip
    return run.returncode, run.stdout + run.stderr


def _fassl_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("fassl: error:")]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_torchrun_ranks_with_other_settings_or_data_stop_naming_the_difference(
    tmp_path: Path,
) -> None:
    code, text = torchrun(tmp_path / "lr", "override:optim.lr=0.2", "optim.epochs=1")
    assert code != 0, text
    lines = _fassl_lines(text)
    assert len(lines) == 2, text  # every rank, one line each
    for line in lines:
        assert "differ in their settings: rank 1 against rank 0" in line, text
        assert "optim.lr" in line and "0.2 on rank 1" in line, text
    assert not (tmp_path / "lr" / SETTINGS).exists() and HUNG not in text
    assert "[rank0]: Traceback" not in text and "[rank1]: Traceback" not in text, text

    code, text = torchrun(tmp_path / "data", "other-image", "optim.epochs=1")
    assert code != 0, text
    lines = _fassl_lines(text)
    assert len(lines) == 2, text
    for line in lines:
        assert "differ in their data: rank 1 against rank 0" in line, text
        assert "pre-training image bytes" in line and "same copy" in line, text
    assert not (tmp_path / "data" / LAST).exists() and HUNG not in text


@pytest.mark.slow
@pytest.mark.trains
@pytest.mark.timeout(300)
def test_torchrun_rank_killed_mid_epoch_is_named_in_one_line(tmp_path: Path) -> None:
    code, text = torchrun(tmp_path, "kill", "optim.epochs=6")
    assert code != 0, text
    # One line; the killed rank is named when the kernel lists its process as ended within
    # distributed.ENDED_WAIT_S of its connections closing (on a loaded machine it may not
    # be: then the line says another process ended, still one line)
    named = "rank 1's process ended without a word (killed, or out of memory)"
    lines = _fassl_lines(text)
    assert len(lines) == 1, text
    assert lines[0] in (
        f"fassl: error: rank 0 stopped: {named}",
        "fassl: error: rank 0 stopped: another process of this run ended",
    ), text
    assert "Connection reset" not in text and "[rank0]: Traceback" not in text, text
    assert HUNG not in text and not (tmp_path / EXPORT).exists()
