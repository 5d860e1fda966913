"""scripts/reproduce_paper_width.py: its plan on hand-computed cases, its refusals, and
the whole script on a stub fassl: the commands it runs, in order, sized by the plan.

The script spends minutes of a GPU machine once started, so a wrong data path or a torch
without CUDA must stop it before any run begins, with one line naming what is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "reproduce_paper_width.py"
_spec = importlib.util.spec_from_file_location("reproduce_paper_width", SCRIPT)
assert _spec is not None and _spec.loader is not None
pw = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = pw  # dataclasses look their module up
_spec.loader.exec_module(pw)

BENCH = {"step_img_s": 6000.0, "recipe_epoch_img_s": 6000.0}


# ---- the plan ----------------------------------------------------------------------
# Defaults: budget 540, reserve 40, start 30, probe 60, 10,752 images an epoch (21
# batches of 512), safety 0.9, stages 5 + 20, one seed. At 6000 img/s an epoch is
# 10752 / 5400 = 1.99111 s; the arms' tail is max(chain 5 + 1.5 * 20 = 35, work
# (5 + 60 + 2.2 * 25) / 1.5 = 80) = 80 epochs, so tail_s = 30 + 120 + 80 e = 309.29.
@pytest.mark.parametrize(
    ("sizing", "bench", "elapsed", "epochs", "note"),
    [
        # (540 - 40 - 10 - 30 - 309.29) / 1.99111 = 75.7
        ({}, BENCH, 10, 75, None),
        # the slower rate: 9000 -> e = 1.32741; (460 - 150 - 80 e) / e = 153.5
        ({}, {"step_img_s": 12000.0, "recipe_epoch_img_s": 9000.0}, 10, 153, None),
        # BCL-D beside the teacher: tail max(35, (5 + 60 + 25) / 1.5 = 60) epochs, share
        # 2.2 / 1.5: (460 - 150 - 60 e) / (1.46667 e) = 65.2
        ({"bcl_d": "scratch"}, BENCH, 10, 65, None),
        # 1000 img/s: the tail alone is over the budget
        ({}, {"step_img_s": 1000.0, "recipe_epoch_img_s": 1000.0}, 10, 20, "raised to T_MIN"),
        ({}, None, 10, 60, "fallback: a fixed 60 epochs"),
        ({"budget_s": 0.0}, BENCH, 10, 500, "no budget"),
        ({"teacher_fixed": 7}, BENCH, 10, 7, "TEACHER_EPOCHS=7"),
    ],
)
def test_plan_teacher(sizing, bench, elapsed, epochs, note) -> None:
    plan = pw.plan_teacher(pw.Sizing(**sizing), bench, elapsed)
    assert plan["epochs"] == epochs
    if note is None:
        assert plan["notes"] == []
    else:
        assert any(note in n for n in plan["notes"]), plan["notes"]


@pytest.mark.parametrize(
    ("elapsed", "stages", "shortened"),
    [
        # teacher 70 epochs in 200 s: (200 - 30) / 70 = 2.42857 s an epoch, more than the
        # bench's 1.99111; 250 s left, scale (250 - 150) / (80 * 2.42857) = 0.5147
        (250, [2, 10], True),
        (100, [5, 20], False),  # scale (400 - 150) / 194.29 = 1.29: as planned
    ],
)
def test_plan_stages(elapsed: int, stages: list[int], shortened: bool) -> None:
    z = pw.Sizing()
    plan = pw.plan_stages(z, pw.plan_teacher(z, BENCH, 10), 70, 200.0, elapsed)
    assert plan["stages"]["stage_epochs"] == stages
    assert plan["stages"]["measured_epoch_s"] == pytest.approx(170 / 70)
    assert any("stages shortened from 5 + 20 to 2 + 10" in n for n in plan["notes"]) == shortened


# ---- the script --------------------------------------------------------------------
STUB = """#!{python}
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
keys = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
if args[:1] == ["bench"]:
    out = Path(args[args.index("--out") + 1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_sdclr.json").write_text(json.dumps({{"rows": [{bench}]}}))
for name in ("encoder.safetensors", "prototypes/encoder.safetensors",
             "rebalance/encoder.safetensors", "results.json"):
    if "out_dir" in keys:  # every file the script waits for, at once
        (Path(keys["out_dir"]) / name).parent.mkdir(parents=True, exist_ok=True)
        (Path(keys["out_dir"]) / name).write_text("{{}}")
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


def script(tmp_path: Path, cuda: bool = True, data: bool = True, **env: str):
    """The script on the stub fassl; (result, the stub's calls, the runs folder)."""
    stub, log, runs = tmp_path / "fassl_stub", tmp_path / "calls.jsonl", tmp_path / "runs"
    stub.write_text(STUB.format(python=sys.executable, bench=json.dumps(BENCH)))
    stub.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in ("TINY", "TEACHER_EPOCHS", "OUT")}
    base |= {"FASSL": str(stub), "PY": sys.executable, "STUB_LOG": str(log), "MPS": "0"}
    base.pop("PYTHONPATH", None)
    if cuda:
        fake = tmp_path / "fake_cuda" / "torch"
        fake.mkdir(parents=True)
        (fake / "__init__.py").write_text(FAKE_CUDA)
        base["PYTHONPATH"] = str(fake.parent)
    if data:
        (tmp_path / "cifar10.tar.gz").write_bytes(b"")
        splits = tmp_path / "splits"
        splits.mkdir()
        for name in pw.SPLIT_FILES:
            (splits / name).write_bytes(b"")
        base |= {"DATA_ROOT": str(tmp_path / "cifar10.tar.gz"), "SPLITS": str(splits)}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(runs)],
        cwd=ROOT,
        env=base | env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    calls = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return result, calls, runs


def arg(call: list[str], key: str) -> str | None:
    return next((a.split("=", 1)[1] for a in call if a.startswith(key + "=")), None)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DATA_ROOT": ""}, "DATA_ROOT is not set"),
        ({"DATA_ROOT": "/nowhere/cifar10.tar.gz"}, "DATA_ROOT=/nowhere/cifar10.tar.gz does not"),
        ({"SPLITS": "/nowhere"}, "SPLITS=/nowhere: trainIdxList.npy not found"),
        ({"BCL_D": "maybe"}, "BCL_D=maybe: continued, scratch or 0"),
    ],
)
def test_refuses_bad_inputs_in_one_line_before_anything_runs(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    result, calls, runs = script(tmp_path, **env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("reproduce_paper_width: error: ") and message in lines[0]
    assert calls == [] and not runs.exists()


@pytest.mark.slow
def test_preflight_refuses_torch_without_cuda(tmp_path: Path) -> None:
    result, calls, runs = script(tmp_path, cuda=False)  # this machine's CPU-only torch
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "pre-flight" in lines[0] and "finds no CUDA device" in lines[0]
    assert calls == [] and not runs.exists()


@pytest.mark.slow  # a dozen stub processes: about 10 s
def test_the_phases_in_order_from_the_teachers_export(tmp_path: Path) -> None:
    result, calls, runs = script(tmp_path, SPLIT2="0", MAX_PACK_BYTES="3000")
    assert result.returncode == 0, result.stderr
    started = re.findall(r"^== (\S+) \(\d+ s elapsed\)$", result.stdout, re.M)
    assert started[:7] == [
        "bench",
        "split1_sdclr",
        "split1_sdclr_continued_seed0",
        "split1_bcl_d_continued_seed0",
        "split1_fassl_from_sdclr_seed0",
        "split1_fassl_from_sdclr_phi1_seed0",
        "split1_fast_sdclr_seed0",
    ]
    assert "split2_sdclr" not in started and "split1_ldam_drw_ssp_seed0" in started
    assert calls[0] == ["--help"] and calls[1][:3] == ["bench", "--method", "sdclr"]
    bench = calls[1]
    assert bench[bench.index("--device") + 1] == "cuda" and "--width" in bench
    by_out = {arg(c, "out_dir"): c for c in calls if arg(c, "out_dir")}
    for call in by_out.values():
        if call[0] != "eval":
            assert "train.device=cuda" in call, call
    split1, plan = runs / "split1", json.loads((runs / "plan.json").read_text())
    assert plan["epochs"] == pw.plan_teacher(pw.Sizing(), BENCH, plan["elapsed_s"])["epochs"]
    s1, s2 = plan["stages"]["stage_epochs"]
    teacher = str(split1 / "sdclr" / "seed0" / "encoder.safetensors")
    sdclr = by_out[str(split1 / "sdclr" / "seed0")]
    assert sdclr[:2] == ["pretrain", "cifar10_lt_paper_width"]
    assert arg(sdclr, "method") == "sdclr" and arg(sdclr, "optim.epochs") == str(plan["epochs"])
    for name, method in (("sdclr_continued", "sdclr"), ("bcl_d_continued", "bcl_d")):
        cont = by_out[str(split1 / name / "seed0")]
        assert arg(cont, "method") == method and arg(cont, "train.init_from") == teacher
        assert arg(cont, "optim.epochs") == str(s1 + s2) and arg(cont, "optim.lr") == "0.05"
    first = by_out[str(split1 / "fassl_from_sdclr" / "seed0")]
    assert first[0] == "pipeline" and arg(first, "pipeline.teacher_checkpoint") == teacher
    assert arg(first, "pipeline.rebalance.epochs") == str(s2)
    phi1 = by_out[str(split1 / "fassl_from_sdclr_phi1" / "seed0")]
    stage1 = split1 / "fassl_from_sdclr" / "seed0" / "prototypes" / "encoder.safetensors"
    assert arg(phi1, "pipeline.prototypes_checkpoint") == str(stage1)
    assert arg(phi1, "rebalance.weight") == "none"
    assert next(c[:2] for c in calls if c[0] == "tables") == ["tables", str(split1)]
    # the report: packed under MAX_PACK_BYTES, what was dropped named in summary.md
    summary = (runs / "summary.md").read_text()
    assert "FASSL as the paper composes it" in summary
    dropped = re.findall(r"^- dropped from the pack \(over 3000 bytes\): (\S+)$", summary, re.M)
    with tarfile.open(runs / "paper_width_report.tar.gz") as pack:
        packed = set(pack.getnames())
    assert dropped and not {f"report/{d}" for d in dropped} & packed
    assert {"report/summary.md", "report/plan.json", "report/runs.tsv"} <= packed
