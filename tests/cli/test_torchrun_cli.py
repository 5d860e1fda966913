"""The command a user types, under torchrun: two CPU processes (gloo) on the demo digits.

Each test launches ``python -m torch.distributed.run --nproc_per_node 2 --standalone -m
fassl.cli ...`` and checks what rank 0 alone writes (locks, exports, logs, probes,
reports), that an interrupted run resumes to the uninterrupted result, that a run split
over two processes equals one process on the same global batch where the maths says it
must (without BatchNorm, whose statistics are per process), and that a failure on one
rank ends the other at once with one line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fassl.cli import main
from fassl.names import EXPORT, LAST
from fassl.processes import LOCK
from fassl.train.checkpoint import load_checkpoint
from tests.bn_free_cli import without_batchnorm

pytestmark = [pytest.mark.trains, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# The demo digits, a long-tailed set of 95 images at 16 px, a width-4 network, tiny probes.
TINY = (
    "model.width=4",
    "model.proj_hidden=16",
    "model.proj_dim=8",
    "data.max_per_class=24",
    "data.image_size=16",
    "probe.fast_epochs=3",
    "probe.knn_k=5",
    "train.device=cpu",
    "train.precision=fp32",
    "train.progress=false",
    "train.checkpoint_every_s=0",
)
EPOCHS = 12  # long enough for the interrupt to land mid-run
PRETRAIN = ("pretrain", "demo", *TINY, "optim.batch_size=16", f"optim.epochs={EPOCHS}")
STAGES = ("teacher", "prototypes", "rebalance")
PIPELINE = (
    "pipeline",
    "demo",
    *TINY,
    "prototypes.num_prototypes=6",
    "rebalance.pred_hidden=16",
    *(f"pipeline.{s}.{k}" for s in STAGES for k in ("epochs=1", "batch_size=16")),
)
# Views equal to the images, so the ranks' random streams do not matter.
IDENTITY_AUG = (
    "augment.crop_scale_min=1.0",
    "augment.flip_p=0.0",
    "augment.jitter_p=0.0",
    "augment.grayscale_p=0.0",
)
# torchrun's own words when a worker did not end on SIGTERM within 30 s
HUNG = "forcefully"


def torchrun(
    *args: str, module: str = "fassl.cli", popen: bool = False
) -> subprocess.CompletedProcess | subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--standalone", "-m", module, *args]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if popen:  # its own process group, so that a signal reaches torchrun and its workers
        return subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip
    return subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False
    )


def output(run: subprocess.CompletedProcess) -> str:
    return run.stdout + run.stderr


def weights(path: Path) -> dict[str, torch.Tensor]:
    tensors, _ = load_checkpoint(path)
    return tensors


def epoch_rows(run_dir: Path) -> int:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return sum(row["kind"] == "epoch" for row in rows)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=atol), key


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An uninterrupted two-process ``fassl pretrain`` and what it printed."""
    out = tmp_path_factory.mktemp("torchrun") / "run"
    run = torchrun(*PRETRAIN, f"out_dir={out}")
    assert run.returncode == 0, output(run)
    return out, output(run)


def test_pretrain_rank0_writes_once(pretrained: tuple[Path, str]) -> None:
    out, text = pretrained
    for name in (EXPORT, "results.json", "report.md", "config.yaml", "settings.json"):
        assert (out / name).is_file(), name
    assert not (out / LOCK).exists()  # rank 0 took the lock and released it
    assert epoch_rows(out) == EPOCHS  # logged by one rank, not by both
    assert text.count("outputs in") == 1  # rank 0 reports for the run
    assert {"standard", "few_shot", "knn"} <= set(json.loads((out / "results.json").read_text()))
    assert "resuming" not in text and "fassl: error" not in text


def test_pipeline_every_stage_and_report(tmp_path: Path) -> None:
    run = torchrun(*PIPELINE, f"out_dir={tmp_path}")
    text = output(run)
    assert run.returncode == 0, text
    for stage in STAGES:
        assert (tmp_path / stage / EXPORT).is_file(), stage
        assert epoch_rows(tmp_path / stage) == 1, stage
    for name in ("results.json", "report.md", "analysis_prototypes.md", "analysis_rebalance.md"):
        assert (tmp_path / name).is_file(), name
    assert not list(tmp_path.rglob(LOCK))
    assert text.count("outputs in") == 1
    # stage 2 read stage 1's export whole: its prototypes, frozen, are exported unchanged
    p1 = weights(tmp_path / "prototypes" / EXPORT)["prototypes"]
    assert torch.equal(p1, weights(tmp_path / "rebalance" / EXPORT)["prototypes"])


def test_interrupted_run_resumes_to_the_same_result(
    tmp_path: Path, pretrained: tuple[Path, str]
) -> None:
    out = tmp_path / "run"
    proc = torchrun(*PRETRAIN, f"out_dir={out}", popen=True)
    assert isinstance(proc, subprocess.Popen)
    deadline = time.monotonic() + 120
    while not (out / LAST).is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGTERM)  # torchrun and both workers, as a terminal would
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0, f"the run ended before the interrupt:\n{text}"
    # rank 0's one line (where it stopped, or that it was interrupted when its collective
    # ended first because rank 1 had already gone)
    assert "fassl: " in text and "interrupted" in text and HUNG not in text, text
    assert not (out / EXPORT).exists()

    again = torchrun(*PRETRAIN, f"out_dir={out}")
    assert again.returncode == 0, output(again)
    assert output(again).count("resuming from") == 1
    assert_same(weights(out / EXPORT), weights(pretrained[0] / EXPORT), atol=1e-6)
    assert epoch_rows(out) == EPOCHS  # the log reads like one uninterrupted run


def test_two_processes_equal_one_without_batchnorm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the plain head: without its BatchNorms the bn head could not be told from it on load
    args = (*PRETRAIN[:-1], "optim.epochs=2", "optim.lr=0.05", "model.head=plain", *IDENTITY_AUG)
    run = torchrun(*args, f"out_dir={tmp_path / 'two'}", module="tests.bn_free_cli")
    assert run.returncode == 0, output(run)
    without_batchnorm(monkeypatch.setattr)
    assert main([*args, f"out_dir={tmp_path / 'one'}"]) == 0
    one, two = weights(tmp_path / "one" / EXPORT), weights(tmp_path / "two" / EXPORT)
    assert not any("running_mean" in k for k in one)  # no BatchNorm left to differ
    # Summation order differs (a batch of 8 a rank selects other oneDNN fp32 kernels than 16
    # on AVX-512 CPUs) and compounds to about 3e-5 in 2 epochs; a learning rate 10 % off moves
    # these weights by 4e-2, so a mis-scaled or rank-local gradient stays far outside.
    assert_same(one, two, atol=2e-4)


def test_failure_in_training_on_rank0_ends_rank1(tmp_path: Path) -> None:
    # rank 0 alone writes checkpoints: a file where their folder goes fails it mid-training,
    # while rank 1 waits for it in a collective
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "checkpoints").write_text("not a folder")
    run = torchrun(*PRETRAIN[:-1], "optim.epochs=1", f"out_dir={tmp_path}")
    text = output(run)
    assert run.returncode != 0
    assert "fassl: error: rank 1 stopped: rank 0 failed" in text, text
    assert "checkpoints" in text and HUNG not in text and "RuntimeError" not in text, text


def test_failure_in_rank0_reporting_ends_rank1(
    tmp_path: Path, pretrained: tuple[Path, str]
) -> None:
    # a finished run again: training is skipped, rank 0 probes and cannot write report.md
    out = tmp_path / "run"
    shutil.copytree(pretrained[0], out)
    (out / "report.md").unlink()
    (out / "report.md").mkdir()
    run = torchrun(*PRETRAIN, f"out_dir={out}")
    text = output(run)
    assert run.returncode != 0
    assert "fassl: error: rank 1 stopped: rank 0 failed" in text, text
    assert "report.md" in text and HUNG not in text and "RuntimeError" not in text, text
    assert not (out / LOCK).exists()
