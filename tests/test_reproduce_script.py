"""scripts/reproduce_paper_width.sh: its syntax, its refusals and its plan.

The script spends minutes of a GPU machine once started, so a wrong data path, a
missing module or a torch without CUDA must stop it before any run begins, with one
line that names what is missing; and on stub fassl, its phases must come in the
documented order, on CUDA, sized from the bench's rate.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tarfile
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


# ---------------------------------------------------------------------------------------
# The script end to end with a stub for fassl: what it calls, in which order, with what.

STUB = """#!{python}
# fassl as the script sees it: each call appended to STUB_LOG, and the files the
# script waits for written at once.
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if not args or args[0] == "--help":
    sys.exit(0)
command, rest = args[0], args[1:]
keys = dict(a.split("=", 1) for a in rest if "=" in a and not a.startswith("-"))


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{{}}")


if command == "bench":
    if os.environ.get("STUB_BENCH_FAIL"):
        sys.exit(1)
    out = Path(rest[rest.index("--out") + 1])
    out.mkdir(parents=True, exist_ok=True)
    rate = float(os.environ["STUB_RATE"])
    row = {{"method": "sdclr", "step_img_s": rate, "recipe_epoch_img_s": rate, "warmup_s": 1}}
    (out / (rest[rest.index("--name") + 1] + ".json")).write_text(json.dumps({{"rows": [row]}}))
elif command in ("pretrain", "pipeline", "eval"):
    out = Path(keys["out_dir"])
    if command == "pretrain":
        touch(out / "encoder.safetensors")
    if command == "pipeline":
        if not keys.get("pipeline.prototypes_checkpoint"):
            touch(out / "prototypes" / "encoder.safetensors")
        touch(out / "rebalance" / "encoder.safetensors")
    touch(out / "results.json")
elif command == "compare":
    for method in keys["compare.methods"].strip("[]").split(","):
        for seed in keys["compare.seeds"].strip("[]").split(","):
            run = Path(keys["out_dir"]) / method / f"seed{{seed}}"
            touch(run / "encoder.safetensors")
            touch(run / "results.json")
"""

# torch as on a CUDA machine: the real one, with torch.cuda.is_available() true.
FAKE_CUDA = """import os, sys
_here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
del sys.modules["torch"]
import torch as _torch  # noqa: E402

_torch.cuda.is_available = lambda: True
_torch.cuda.get_device_name = lambda *device: "stub GPU"
sys.modules["torch"] = _torch
"""

VENV_PY = ROOT / ".venv" / "bin" / "python"
needs_venv = pytest.mark.skipif(not VENV_PY.exists(), reason="needs .venv")


def stubbed(tmp_path: Path, rate: float = 6000.0, cuda: bool = True, **env: str):
    """The script on stub fassl, real data paths checked; (result, calls, runs folder)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    stub = tmp_path / "fassl_stub"
    stub.write_text(STUB.format(python=VENV_PY))
    stub.chmod(0o755)
    data = tmp_path / "cifar10-jpeg.tar.gz"
    data.write_bytes(b"")
    log = tmp_path / "calls.jsonl"
    base = {k: v for k, v in os.environ.items() if k not in ("TINY", "TEACHER_EPOCHS", "OUT")}
    base.pop("PYTHONPATH", None)
    if cuda:
        fake = tmp_path / "fake_cuda" / "torch"
        fake.mkdir(parents=True)
        (fake / "__init__.py").write_text(FAKE_CUDA)
        base["PYTHONPATH"] = str(fake.parent)
    base |= {
        "FASSL": str(stub),
        "PY": str(VENV_PY),
        "STUB_LOG": str(log),
        "STUB_RATE": str(rate),
        "DATA_ROOT": str(data),
        "SPLITS": str(splits_folder(tmp_path)),
        "MPS": "0",
        "OMP_NUM_THREADS": "1",
    }
    runs = tmp_path / "runs"
    result = subprocess.run(
        ["bash", str(SCRIPT), str(runs)],
        cwd=ROOT,
        env=base | env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls, runs


def training(calls: list[list[str]]) -> list[list[str]]:
    return [c for c in calls if c and c[0] in ("pretrain", "pipeline", "compare", "eval")]


def out_dir(call: list[str]) -> str:
    return arg(call, "out_dir") or ""


def arg(call: list[str], key: str) -> str | None:
    return next((a.split("=", 1)[1] for a in call if a.startswith(key + "=")), None)


def expected_epochs(plan: dict, rate: float) -> int:
    """The header's formula, from the inputs plan.json records."""
    s1, s2 = plan["stage_epochs"]
    c = plan["costs"]
    e = plan["epoch_images"] / (rate * plan["safety"])
    chain = c["stage1"] * s1 + c["stage2"] * s2
    work = plan["seeds"] * (c["stage1"] * s1 + 2 * c["stage2"] * s2 + (1 + c["bcl"]) * (s1 + s2))
    tail = plan["start_s"] + 2 * plan["probe_s"] + e * max(chain, work / c["mps_gain"])
    room = plan["budget_s"] - plan["reserve_s"] - plan["elapsed_s"] - plan["start_s"]
    sized = math.floor((room - tail) / e)
    return int(min(max(sized, plan["t_min"]), plan["t_max"]))


@needs_venv
def test_preflight_refuses_torch_without_cuda(tmp_path: Path) -> None:
    result, calls, runs = stubbed(tmp_path, cuda=False)  # this machine's CPU-only torch
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pre-flight" in lines[0] and "finds no CUDA device" in lines[0]
    assert calls == [] and not runs.exists()  # nothing started, nothing written


@needs_venv
def test_preflight_names_a_missing_module(tmp_path: Path) -> None:
    blocker = tmp_path / "block" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('not installed here')\n")
    result, calls, _ = stubbed(tmp_path, PYTHONPATH=str(blocker.parent))
    assert result.returncode != 0
    assert "cannot import matplotlib" in result.stderr
    assert calls == []


@needs_venv
def test_phases_in_order_on_cuda_from_the_teachers_export(tmp_path: Path) -> None:
    result, calls, runs = stubbed(tmp_path)
    assert result.returncode == 0, result.stderr
    bench = [c for c in calls if c and c[0] == "bench"]
    assert len(bench) == 1 and calls.index(bench[0]) < calls.index(training(calls)[0])
    assert bench[0][bench[0].index("--device") + 1] == "cuda"
    assert bench[0][bench[0].index("--method") + 1] == "sdclr"
    assert bench[0][bench[0].index("--steps") + 1] == "20"
    assert bench[0][bench[0].index("--width") + 1] == "64"
    trained = training(calls)
    for call in trained:
        if call[0] != "eval":
            assert "train.device=cuda" in call, call
    # start order: the script's own "== run (N s elapsed)" lines (the stubs of concurrent
    # runs may log in any order)
    started = re.findall(r"^== (\S+) \(\d+ s elapsed\)$", result.stdout, re.M)
    main = [
        "bench",
        "split1_sdclr",
        "split1_sdclr_continued_seed0",
        "split1_bcl_d_continued_seed0",
        "split1_fassl_from_sdclr_seed0",
        "split1_fassl_from_sdclr_phi1_seed0",
    ]
    assert started[: len(main)] == main
    # the lower-priority phases start once every main run has ended (here, because the
    # stub leaves them time)
    rows = [line.split("\t") for line in (runs / "logs/runs.tsv").read_text().splitlines()]
    main_end = max(int(r[4]) for r in rows if r[1] in main)
    later = [r for r in rows if r[1] not in main]
    assert later and all(int(r[3]) >= main_end for r in later)
    assert "split1_fast_sdclr_seed0" in started[len(main) :]
    split1 = runs / "split1"
    by_dir = {out_dir(c): c for c in trained}
    run = {
        name: by_dir[str(split1 / name / "seed0")]
        for name in (
            "sdclr",
            "sdclr_continued",
            "bcl_d_continued",
            "fassl_from_sdclr",
            "fassl_from_sdclr_phi1",
        )
    }
    teacher = str(split1 / "sdclr" / "seed0" / "encoder.safetensors")
    first, phi1 = run["fassl_from_sdclr"], run["fassl_from_sdclr_phi1"]
    assert first[0] == "pipeline" and arg(first, "pipeline.teacher_checkpoint") == teacher
    stage1 = str(split1 / "fassl_from_sdclr" / "seed0" / "prototypes" / "encoder.safetensors")
    assert phi1[0] == "pipeline" and arg(phi1, "pipeline.prototypes_checkpoint") == stage1
    assert arg(phi1, "rebalance.weight") == "none"
    plan = json.loads((runs / "plan.json").read_text())
    s1, s2 = plan["stage_epochs"]
    assert run["sdclr"][0] == "pretrain" and arg(run["sdclr"], "method") == "sdclr"
    assert arg(run["sdclr"], "optim.epochs") == str(plan["epochs"])
    for name, method in (("sdclr_continued", "sdclr"), ("bcl_d_continued", "bcl_d")):
        cont = run[name]
        assert cont[0] == "pretrain" and arg(cont, "method") == method
        assert arg(cont, "train.init_from") == teacher
        assert arg(cont, "optim.epochs") == str(s1 + s2)
        assert arg(cont, "optim.lr") == "0.05" and arg(cont, "optim.warmup_epochs") == "2"
    assert arg(first, "pipeline.prototypes.epochs") == str(s1)
    assert arg(first, "pipeline.rebalance.epochs") == str(s2)
    summary = (runs / "report" / "summary.md").read_text()
    assert "FASSL as the paper composes it" in summary and "fassl_from_sdclr" in summary
    with tarfile.open(runs / "paper_width_report.tar.gz") as pack:
        assert pack.getmember("report/summary.md")


@needs_venv
def test_bench_rate_sizes_the_teacher(tmp_path: Path) -> None:
    epochs = {}
    for rate in (6000.0, 12000.0):
        result, calls, runs = stubbed(tmp_path / str(rate), rate=rate, SPLIT2="0")
        assert result.returncode == 0, result.stderr
        plan = json.loads((runs / "plan.json").read_text())
        assert plan["rate_img_s"] == rate
        assert plan["epochs"] == expected_epochs(plan, rate)
        teacher = next(c for c in calls if c and c[0] == "pretrain")
        assert arg(teacher, "optim.epochs") == str(plan["epochs"])
        epochs[rate] = plan["epochs"]
    assert 20 < epochs[6000.0] < epochs[12000.0] < 500


@needs_venv
def test_failed_bench_falls_back_and_says_so(tmp_path: Path) -> None:
    result, calls, runs = stubbed(tmp_path, STUB_BENCH_FAIL="1", SPLIT2="0")
    assert result.returncode == 0, result.stderr
    teacher = next(c for c in calls if c and c[0] == "pretrain")
    assert arg(teacher, "optim.epochs") == "60"
    assert "fallback: a fixed 60 epochs" in (runs / "report" / "summary.md").read_text()


@needs_venv
def test_short_budget_shortens_the_stages_and_trims_the_pack(tmp_path: Path) -> None:
    result, calls, runs = stubbed(
        tmp_path, rate=2000.0, BUDGET_S="300", SPLIT2="0", MAX_PACK_BYTES="3000"
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads((runs / "plan.json").read_text())
    assert plan["epochs"] == 20  # T_MIN: the budget fits fewer
    s1, s2 = plan["stages"]["stage_epochs"]
    assert (s1, s2) < (5, 20)
    cont = next(c for c in calls if "sdclr_continued" in out_dir(c))
    first = next(c for c in calls if c[0] == "pipeline")
    assert arg(cont, "optim.epochs") == str(s1 + s2)
    assert arg(first, "pipeline.rebalance.epochs") == str(s2)
    summary = (runs / "summary.md").read_text()
    assert "stages shortened" in summary
    dropped = re.findall(r"^- dropped from the pack \(over 3000 bytes\): (\S+)$", summary, re.M)
    assert dropped
    with tarfile.open(runs / "paper_width_report.tar.gz") as pack:
        packed = pack.getnames()
    assert not {f"report/{d}" for d in dropped} & set(packed)
    assert {"report/summary.md", "report/plan.json", "report/runs.tsv"} <= set(packed)
