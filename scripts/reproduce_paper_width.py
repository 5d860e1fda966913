#!/usr/bin/env python3
"""CIFAR-10-LT at the paper's width (configs/cifar10_lt_paper_width.yaml: ResNet-18 width
64, batch 512, bf16) on SDCLR's published split 1, in ONE command of at most 10 minutes on
one GPU (H100/H200). The GPU machine starts bare every time and only small files come
back, so every phase below runs, and is reported, within that one command.

  0. pre-flight: torch with CUDA, safetensors, matplotlib and fassl import; DATA_ROOT and
     SPLITS exist. Fails at once, with one line naming what is missing.
  1. bench: `fassl bench`, 20 timed steps (and two epochs) of SDCLR at the recipe's width
     and batch; its rate sizes the teacher (``plan_teacher``) so that phases 2-3 end
     inside BUDGET_S. If it fails, the teacher gets FALLBACK_EPOCHS and summary.md says
     so.                                                              -> RUNS/bench
  2. the SDCLR teacher, seed 0, T epochs                       -> RUNS/split1/sdclr/seed0
  3. FASSL as the paper composes it (Algorithm 1 starts its teacher from SDCLR), every
     arm from the teacher's export, for each seed of SEEDS, as concurrent processes. By
     priority:
     a. fassl_from_sdclr: stages 1 (STAGE1_EPOCHS) and 2 (STAGE2_EPOCHS) on the export
        (pipeline.teacher_checkpoint), the configured weight (knn, strength 0.5);
     b. fassl_from_sdclr_phi1: stage 2 with phi = 1 from a's stage-1 checkpoint;
     c. sdclr_continued: the export trained STAGE1 + STAGE2 more epochs at stage 2's lr
        and warm-up (CONT_LR, CONT_WARMUP), so a - c is the two stages' gain at equal
        extra compute;
     d. bcl_d_continued: BCL-D with the reference's defaults from the export, as long and
        at the same lr as c, against c. BCL_D=scratch trains BCL-D from scratch for T
        epochs beside the teacher instead (against it), BCL_D=0 leaves it out.
     Started in the order c, d (at the export), a (once the teacher's own probe has
     written its results.json: the pipeline reads it rather than probing the teacher a
     second time), b (at a's stage-1 export). Every encoder gets SDCLR's augmented probe,
     standard and few-shot. If the teacher ran long, the stages are shortened to what is
     left (``plan_stages``; the same STAGE1 + STAGE2 for c and d), and summary.md says so.
Then, each only when the wall clock so far says it fits in what is left, in order:
  4. the fast probe (features extracted once) of the same encoders  -> RUNS/fast/split1
  5. the CPU-scale comparison (cifar10_lt_cpu: width 32, CPU_EPOCHS) on split 1, the same
     arms                                                     -> RUNS/cpu_scale_split1
  6. SimCLR and BYOL from scratch for T + STAGE1 + STAGE2 epochs, seed 0  -> RUNS/split1
  7. split 2: phases 2-3 again (SPLIT2=1)                                -> RUNS/split2
  8. the other label-free re-balancers, seed 0, from scratch for T + STAGE1 + STAGE2
     epochs: BCL-I with the common augmentations, SimCLR with the cosine temperature
     schedule, BCL-D (for T epochs, beside the teacher); LDAM-DRW+SSP (from the teacher)
then `fassl tables` of each folder and a report of small files: each run's results.json,
the tables, log tails, per-epoch throughput, the bench and the plan, summary.md (GPU,
epochs, seeds, split, wall clock of every phase against the plan), packed into
PACK_TO/paper_width_report.tar.gz (kept under MAX_PACK_BYTES by dropping the largest log
tails, metrics and analyses) with a copy of summary.md beside it.

    DATA_ROOT=/path/to/cifar10-jpeg.tar.gz SPLITS=/path/to/sdclr-splits/cifar10 \\
      python3 scripts/reproduce_paper_width.py [RUNS] [key=value ...]

DATA_ROOT: the CIFAR-10 JPEG copy, its .tar.gz or the extracted folder (required).
SPLITS: SDCLR's index files for CIFAR-10 (sdclr-splits/cifar10; required).
TEACHER_EPOCHS: a fixed T (unset: sized by the bench). STAGE1_EPOCHS (5), STAGE2_EPOCHS
  (20): the stages are this project's choice (the paper gives none).
SEEDS ("0"): seeds of the arms; the teacher is seed 0.
BUDGET_S (540; 0 = none): runs are stopped at BUDGET_S - RESERVE_S (40) seconds, the rest
  is for the tables and the report. A run that would start with less than MIN_RUN_S (20)
  seconds left is skipped.
Sizing: SAFETY (0.9), START_S (30), PROBE_S (60), COST_STAGE1 (1.0), COST_STAGE2 (1.5),
  COST_BCL (1.2), MPS_GAIN (1.5 with concurrent processes, else 1), T_MIN (20), T_MAX
  (500), FALLBACK_EPOCHS (60), BENCH_TIMEOUT_S (150); see ``plan_teacher``.
PARALLEL (1): independent runs as concurrent processes. MPS (auto): start the CUDA MPS
  daemon so that their kernels share the GPU, and stop it at the end if started here.
TEACHER_COMPILE (eager) / STAGE_COMPILE (eager): train.compile of the teacher (and the
  bench) and of the other runs.
CONT_LR (0.05), CONT_WARMUP (2): c's and d's lr and warm-up (the recipe's stage 2).
CPU_EPOCHS ("25 5 15"): teacher, stage 1 and stage 2 epochs of phase 5.
SPLIT2 (1): try phase 7. PACK_TO: where the tar.gz goes (default $OUT if set, else RUNS).
  MAX_PACK_BYTES (15 MiB).
PY: the interpreter the pre-flight checks and that runs fassl (.venv/bin/python if there
  is one, else python3). FASSL: another command for fassl (default: PY -m fassl, with
  src/ on PYTHONPATH). Run from the repository root.
WHEELS: a folder of wheels (e.g. omegaconf) installed into /tmp/fassl-site first, for a
  machine that has torch but not every dependency.
TINY=1: width 4, 1-2 epochs, scikit-learn's digits, any device, no budget: the whole
  script in minutes on a CPU, to check it end to end. TINY_DATA=real keeps
  DATA_ROOT/SPLITS.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"  # fassl's source, beside this script
SPLIT_FILES = (
    "trainIdxList.npy",
    "valIdxList.npy",
    "cifar10_train_labels.npy",
    "split1_D_i.npy",
    "split1_S_b.npy",
)
TINY_OVERRIDES = [
    *("model.width=4", "optim.batch_size=64", "pipeline.teacher.batch_size=64"),
    *("pipeline.prototypes.batch_size=64", "pipeline.rebalance.batch_size=64"),
    *("optim.warmup_epochs=0", "pipeline.prototypes.warmup_epochs=0"),
    *("pipeline.rebalance.warmup_epochs=0", "prototypes.num_prototypes=16", "train.knn_every=0"),
    *("probe.standard_epochs=1", "probe.few_shot_epochs=1", "probe.fast_epochs=3"),
    "probe.knn_k=20",
]
TINY_DIGITS = [
    *("data.dataset=digits", "data.root=''", "data.sdclr_splits=''", "data.imbalance=10"),
    *("data.val_per_class=10", "data.few_shot_fraction=0.1"),
]
TABLE_DIRS = ("split1", "split2", "cpu_scale_split1", "fast/split1", "fast/split2")

PREFLIGHT = """
import importlib, os, sys
missing = []
for name in ("torch", "safetensors.torch", "matplotlib", "fassl.cli"):
    try:
        importlib.import_module(name)
    except Exception as err:  # any failure to import is the answer
        missing.append(f"{name} ({type(err).__name__}: {err})".replace("\\n", " "))
if missing:
    print(f"{sys.executable} cannot import " + "; ".join(missing)
          + " (WHEELS can supply pure-Python packages)")
    sys.exit(1)
import torch
cuda = torch.cuda.is_available()
if os.environ["NEED_CUDA"] == "1" and not cuda:
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    print(f"torch {torch.__version__} ({build}) finds no CUDA device: this script needs "
          "a GPU and a CUDA build of torch (TINY=1 checks the script on a CPU)")
    sys.exit(1)
device = torch.cuda.get_device_name() if cuda else "no CUDA device"
print(f"torch {torch.__version__}, {device}; python {sys.version.split()[0]} at {sys.executable}")
"""


class Refused(Exception):
    """A missing input or tool: one line, exit status 2, before any run starts."""


# ---- the plan: pure functions of the bench's rate, the budget and the clock ----------
@dataclass(frozen=True)
class Sizing:
    """Everything the teacher's and the stages' epochs depend on but the clock.

    Costs are in SDCLR-epoch units, guesses until summary.md's planned-against-actual
    seconds of a first run give better ones.
    """

    budget_s: float = 540.0  # 0: no budget
    reserve_s: float = 40.0
    safety: float = 0.9
    start_s: float = 30.0  # process start, data, first steps
    probe_s: float = 60.0  # one SDCLR probe
    cost_stage1: float = 1.0
    cost_stage2: float = 1.5
    cost_bcl: float = 1.2
    mps_gain: float = 1.5
    t_min: float = 20.0
    t_max: float = 500.0
    fallback_epochs: float = 60.0
    seeds: int = 1
    bcl_d: str = "continued"
    stage1: int = 5
    stage2: int = 20
    epoch_images: int = 10752  # 11,165 images in whole batches of 512
    teacher_fixed: int | None = None

    def tail_epochs(self, s1: int, s2: int) -> float:
        """The arms' GPU time in teacher epochs: a's chain, or all arms' work shared."""
        chain = self.cost_stage1 * s1 + self.cost_stage2 * s2
        cont = 1 + (self.cost_bcl if self.bcl_d == "continued" else 0)
        work = self.seeds * (self.cost_stage1 * s1 + 2 * self.cost_stage2 * s2 + cont * (s1 + s2))
        return max(chain, work / self.mps_gain)

    def room_s(self, elapsed_s: float) -> float:
        return self.budget_s - self.reserve_s - elapsed_s

    @property
    def fixed_s(self) -> float:
        """A run's start, the teacher's probe and a's probe."""
        return self.start_s + 2 * self.probe_s


def plan_teacher(z: Sizing, bench: Mapping[str, Any] | None, elapsed_s: float) -> dict[str, Any]:
    """The teacher's epochs T from the bench's row (None: no rate), as plan.json holds it.

    e      = epoch images / (the slower of the step and epoch rates * SAFETY)
    tail_s = START_S + 2 PROBE_S + e * tail_epochs(S1, S2)
    T      = floor((BUDGET_S - RESERVE_S - elapsed - START_S - tail_s) / e'),
             clamped to [T_MIN, T_MAX]; e' = e, or e (1 + COST_BCL) / MPS_GAIN (at
             least e) with BCL_D=scratch, whose BCL-D shares the GPU with the teacher.
    """
    s1, s2 = z.stage1, z.stage2
    bench = bench or {}
    notes: list[str] = []
    rates = [bench[k] for k in ("step_img_s", "recipe_epoch_img_s") if bench.get(k)]
    rate = min(rates) if rates else None
    e = z.epoch_images / (rate * z.safety) if rate else None
    tail_s = z.fixed_s + z.tail_epochs(s1, s2) * e if e else None
    share = max(1.0, (1 + z.cost_bcl) / z.mps_gain) if z.bcl_d == "scratch" else 1.0
    teacher_s = z.room_s(elapsed_s) - z.start_s - tail_s if e and tail_s else None
    if z.teacher_fixed is not None:
        epochs = z.teacher_fixed
        notes.append(f"TEACHER_EPOCHS={epochs} (fixed)")
    elif z.budget_s <= 0:
        epochs = int(z.t_max)
        notes.append("no budget: T_MAX epochs")
    elif e is None or teacher_s is None:
        epochs = int(min(z.fallback_epochs, z.t_max))
        notes.append(f"fallback: a fixed {epochs} epochs, not sized")
    else:
        sized = math.floor(teacher_s / (e * share))
        epochs = int(min(max(sized, z.t_min), z.t_max))
        if sized < z.t_min:
            notes.append(
                f"the budget fits {sized} epochs: raised to T_MIN, the arms may not all finish"
            )
        elif sized > z.t_max:
            notes.append(f"the budget fits {sized} epochs: capped at T_MAX")
    return {
        "bench": {k: bench.get(k) for k in ("step_img_s", "recipe_epoch_img_s", "warmup_s")},
        "rate_img_s": rate,
        "safety": z.safety,
        "epoch_images": z.epoch_images,
        "epoch_s": e,
        "elapsed_s": elapsed_s,
        "budget_s": z.budget_s,
        "reserve_s": z.reserve_s,
        "start_s": z.start_s,
        "probe_s": z.probe_s,
        "costs": {
            "stage1": z.cost_stage1,
            "stage2": z.cost_stage2,
            "bcl": z.cost_bcl,
            "mps_gain": z.mps_gain,
        },
        "seeds": z.seeds,
        "bcl_d": z.bcl_d,
        "stage_epochs": [s1, s2],
        "tail_s": tail_s,
        "teacher_epoch_share": share,
        "teacher_s": teacher_s,
        "epochs": epochs,
        "t_min": z.t_min,
        "t_max": z.t_max,
        "notes": notes,
    }


def plan_stages(
    z: Sizing, plan: Mapping[str, Any], epochs: int, teacher_s: float, elapsed_s: float
) -> dict[str, Any]:
    """At the teacher's export: the stages shortened to what is left if it ran long.

    The epoch time is the larger of the bench's and the teacher's own (its wall clock
    less START_S over its epochs); the stages scale by what is left after the fixed
    costs over what their tail needs. Returns ``plan`` with ``stages`` (and a note).
    """
    s1, s2 = plan.get("stage_epochs", [z.stage1, z.stage2])
    measured = (teacher_s - z.start_s) / epochs if epochs and teacher_s > z.start_s else None
    known = [x for x in (plan.get("epoch_s"), measured) if x]
    e = max(known) if known else None
    room = z.room_s(elapsed_s)
    scale = (room - z.fixed_s) / (z.tail_epochs(s1, s2) * e) if e and z.budget_s > 0 else 1.0
    new = [s1, s2]
    notes = list(plan.get("notes", []))
    if scale < 1:
        new = [max(1, math.floor(s1 * scale)), max(1, math.floor(s2 * scale))]
        notes.append(
            f"too little time left after the teacher: stages shortened from {s1} + {s2} "
            f"to {new[0]} + {new[1]} epochs ({room:.0f} s left at its export)"
        )
    stages = {
        "teacher_s": teacher_s,
        "measured_epoch_s": measured,
        "room_s": room,
        "scale": scale,
        "stage_epochs": new,
    }
    return {**plan, "notes": notes, "stages": stages}


# ---- the settings ------------------------------------------------------------------
@dataclass
class Settings:
    runs: Path
    extra: list[str]
    tiny: bool
    sizing: Sizing
    min_run_s: float
    parallel: bool
    mps: str
    teacher_compile: str
    stage_compile: str
    cont_lr: str
    cont_warmup: str
    cpu_epochs: tuple[int, int, int]
    split2: bool
    pack_to: Path
    max_pack_bytes: int
    bench_timeout_s: str
    seeds: list[str]
    py: str
    data_root: str
    splits: str
    tiny_data: str
    wheels: str
    fassl: str
    bench_args: list[str] = field(default_factory=list)
    device_args: list[str] = field(default_factory=list)


def settings_from(argv: list[str], env: Mapping[str, str]) -> Settings:
    """The command line and the environment, with the defaults of the module docstring."""
    runs = Path(argv[0] if argv else "runs/paper_width")
    tiny = env.get("TINY", "0") == "1"
    get = env.get
    if tiny:
        t_fixed, s1, s2 = get("TEACHER_EPOCHS", "2"), get("STAGE1_EPOCHS", "1"), "1"
        budget, warmup, cpu = get("BUDGET_S", "0"), get("CONT_WARMUP", "0"), "2 1 1"
        batch, images, device_args = 64, 256, []
        bench = "--width 4 --batch 64 --images 256 --steps 2 --epochs 2 --device auto"
    else:
        t_fixed, s1, s2 = get("TEACHER_EPOCHS", ""), get("STAGE1_EPOCHS", "5"), "20"
        budget, warmup, cpu = get("BUDGET_S", "540"), get("CONT_WARMUP", "2"), "25 5 15"
        # the recipe's batch; 11,165 images: split 1's long-tailed pre-training set
        batch, images, device_args = 512, 11165, ["train.device=cuda"]
        bench = "--width 64 --batch 512 --images 11165 --steps 20 --epochs 2 --device cuda"
        bench += " --precision bf16"
    parallel = get("PARALLEL", "1") == "1"
    bcl_d = get("BCL_D", "continued")
    if bcl_d not in ("continued", "scratch", "0"):
        raise Refused(f"BCL_D={bcl_d}: continued, scratch or 0")
    seeds = get("SEEDS", "0").split()
    number = {  # the sizing's numbers, each from its variable when set
        name: float(get(name.upper(), str(value)))
        for name, value in (
            ("reserve_s", 40),
            ("safety", 0.9),
            ("start_s", 30),
            ("probe_s", 60),
            ("cost_stage1", 1.0),
            ("cost_stage2", 1.5),
            ("cost_bcl", 1.2),
            ("mps_gain", 1.5 if parallel else 1),
            ("t_min", 20),
            ("t_max", 500),
            ("fallback_epochs", 60),
        )
    }
    sizing = Sizing(
        budget_s=float(budget),
        seeds=len(seeds),
        bcl_d=bcl_d,
        stage1=int(s1),
        stage2=int(get("STAGE2_EPOCHS", s2)),
        epoch_images=images // batch * batch,
        teacher_fixed=int(t_fixed) if t_fixed else None,
        **number,
    )
    py = get("PY") or (".venv/bin/python" if os.access(".venv/bin/python", os.X_OK) else "python3")
    c_t, c_1, c_2 = (int(x) for x in get("CPU_EPOCHS", cpu).split())
    return Settings(
        runs=runs,
        extra=argv[1:],
        tiny=tiny,
        sizing=sizing,
        min_run_s=float(get("MIN_RUN_S", "20")),
        parallel=parallel,
        mps=get("MPS", "auto"),
        teacher_compile=get("TEACHER_COMPILE", "eager"),
        stage_compile=get("STAGE_COMPILE", "eager"),
        cont_lr=get("CONT_LR", "0.05"),
        cont_warmup=warmup,
        cpu_epochs=(c_t, c_1, c_2),
        split2=get("SPLIT2", "1") == "1",
        pack_to=Path(get("PACK_TO") or get("OUT") or runs),
        max_pack_bytes=int(get("MAX_PACK_BYTES", "15728640")),
        bench_timeout_s=get("BENCH_TIMEOUT_S", "150"),
        seeds=seeds,
        py=py,
        data_root=get("DATA_ROOT", ""),
        splits=get("SPLITS", ""),
        tiny_data=get("TINY_DATA", "digits"),
        wheels=get("WHEELS", ""),
        fassl=get("FASSL", ""),
        bench_args=bench.split(),
        device_args=device_args,
    )


def check_inputs(s: Settings) -> None:
    """DATA_ROOT and SPLITS, before any GPU time is spent."""
    if s.tiny and s.tiny_data != "real":
        return
    if not s.data_root:
        raise Refused(
            "DATA_ROOT is not set: give the CIFAR-10 JPEG copy, e.g. "
            "DATA_ROOT=../shared/data/cifar10-jpeg.tar.gz (or its extracted folder)"
        )
    if not os.path.exists(s.data_root):
        raise Refused(
            f"DATA_ROOT={s.data_root} does not exist (the CIFAR-10 JPEG copy: "
            "cifar10-jpeg.tar.gz or its extracted folder)"
        )
    if not s.splits:
        raise Refused(
            "SPLITS is not set: give SDCLR's CIFAR-10 index files, e.g. "
            "SPLITS=../shared/data/sdclr-splits/cifar10"
        )
    for name in SPLIT_FILES:
        if not os.path.isfile(os.path.join(s.splits, name)):
            raise Refused(f"SPLITS={s.splits}: {name} not found (SDCLR's sdclr-splits/cifar10)")


def prepare(s: Settings, env: dict[str, str]) -> tuple[list[str], str]:
    """WHEELS installed, fassl's command, the pre-flight: (fassl command, its one line).
    ``env`` (the runs' environment) gets PYTHONPATH and the thread count."""

    def prepend(path: str) -> None:
        env["PYTHONPATH"] = path + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")

    if s.wheels:
        wheels = sorted(str(p) for p in Path(s.wheels).glob("*.whl"))
        pip = [s.py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        pip += ["--target", "/tmp/fassl-site", *wheels]
        if not wheels or subprocess.run(pip).returncode != 0:
            raise Refused(f"WHEELS={s.wheels}: could not install its wheels")
        prepend("/tmp/fassl-site")
    if s.fassl:
        fassl = shlex.split(s.fassl)
    else:  # the interpreter the pre-flight checks is the one that runs
        fassl = [s.py, "-m", "fassl"]
        prepend(str(SRC))
    # Concurrent processes with a thread per core each wait on one another's threads.
    if s.tiny:
        env.setdefault("OMP_NUM_THREADS", "1")
    elif s.parallel:
        env.setdefault("OMP_NUM_THREADS", "2")
    need_cuda = "0" if s.tiny else "1"
    try:
        out = subprocess.run(
            [s.py, "-c", PREFLIGHT],
            env=env | {"NEED_CUDA": need_cuda},
            capture_output=True,
            text=True,
        )
    except OSError as err:
        raise Refused(f"pre-flight: PY={s.py} does not run ({err})") from err
    # the check's own last line, without any warning printed around it
    lines = out.stdout.strip().splitlines() or out.stderr.strip().splitlines() or ["no output"]
    if out.returncode != 0:
        raise Refused(f"pre-flight: {lines[-1]}")
    return fassl, lines[-1]


# ---- running jobs ------------------------------------------------------------------
@dataclass
class Experiment:
    """One recipe on one split: its folder, its overrides and its lengths."""

    tag: str
    folder: Path
    args: list[str]  # the recipe, then its overrides
    teacher_epochs: int
    stage1: int
    stage2: int

    @property
    def teacher(self) -> Path:
        return self.folder / "sdclr" / "seed0" / "encoder.safetensors"


class Runner:
    """Starts, logs, times and limits the runs; the phases' order is ``main``'s."""

    def __init__(self, s: Settings, fassl: list[str], env: dict[str, str], common: list[str]):
        self.s, self.fassl, self.env, self.common = s, fassl, env, common
        self.start = time.monotonic()
        self.phase = ""
        self.logs = s.runs / "logs"
        self.tsv = self.logs / "runs.tsv"
        self.lock = threading.Lock()
        self.jobs: list[threading.Thread] = []
        self.rcs: dict[str, str] = {}

    def elapsed(self) -> int:
        return int(time.monotonic() - self.start)

    def left(self) -> int:
        return int(self.s.sizing.room_s(self.elapsed()))

    def say(self, text: str) -> None:
        print(text, flush=True)

    def row(self, phase: str, name: str, folder: str, t0: int, rc: str) -> None:
        with self.lock, self.tsv.open("a") as f:
            f.write(f"{phase}\t{name}\t{folder}\t{t0}\t{self.elapsed()}\t{rc}\n")

    def run(self, name: str, folder: Path, command: list[str]) -> threading.Thread | None:
        """A run, logged to logs/NAME.log, limited by the budget, in the background with
        PARALLEL=1; None when skipped."""
        limit: list[str] = []
        if self.s.sizing.budget_s > 0:
            if self.left() < self.s.min_run_s:
                self.say(f"== {name}: skipped, budget spent")
                self.row(self.phase, name, str(folder), self.elapsed(), "skipped_budget")
                return None
            limit = ["timeout", "-k", "10", str(self.left())]  # TERM: fassl checkpoints
        self.say(f"== {name} ({self.elapsed()} s elapsed)")
        phase = self.phase

        def job() -> None:
            t0 = self.elapsed()
            with (self.logs / f"{name}.log").open("w") as log:
                try:
                    rc = subprocess.run(
                        [*limit, *command], stdout=log, stderr=subprocess.STDOUT, env=self.env
                    ).returncode
                except OSError as err:
                    log.write(f"{err}\n")
                    rc = 127
            rc = 128 - rc if rc < 0 else rc  # killed by a signal: as a shell reports it
            self.rcs[name] = str(rc)
            self.row(phase, name, str(folder), t0, str(rc))
            self.say(f"== {name}: exit {rc} ({self.elapsed()} s elapsed)")

        if not self.s.parallel:
            job()
            return None
        thread = threading.Thread(target=job, name=name)
        thread.start()
        self.jobs.append(thread)
        return thread

    def wait(self) -> None:
        for job in self.jobs:
            job.join()
        self.jobs = []

    def wait_for(self, path: Path, job: threading.Thread | None) -> bool:
        """True once ``path`` exists; False once ``job`` (None: every job) has ended
        without writing it."""
        while not path.is_file():
            if not (job.is_alive() if job else any(j.is_alive() for j in self.jobs)):
                break
            time.sleep(0.5)
        return path.is_file()

    def fits(self, phase: str, need_s: int) -> bool:
        """Enough budget left for a phase that needs ``need_s`` seconds."""
        if self.s.sizing.budget_s == 0 or self.left() >= need_s:
            return True
        self.say(f"== {phase}: skipped, needs about {need_s} s, {self.left()} s left")
        self.row(phase, phase, "-", self.elapsed(), f"skipped_needs_{need_s}s")
        return False

    # ---- the phases ------------------------------------------------------------
    def experiment(
        self, tag: str, folder: str, recipe: str, split: int, t: int, s1: int, s2: int
    ) -> Experiment:
        stages = [f"pipeline.prototypes.epochs={s1}", f"pipeline.rebalance.epochs={s2}"]
        args = [recipe, f"data.split={split}", *self.common, *stages]
        return Experiment(tag, self.s.runs / folder, args, t, s1, s2)

    def teacher(self, x: Experiment) -> threading.Thread | None:
        """The SDCLR teacher, and BCL-D from scratch beside it with BCL_D=scratch."""
        methods = ["sdclr", "bcl_d"] if self.s.sizing.bcl_d == "scratch" else ["sdclr"]
        jobs = []
        for m in methods:
            out = x.folder / m / "seed0"
            jobs.append(
                self.run(
                    f"{x.tag}_{m}",
                    out,
                    [
                        *self.fassl,
                        "pretrain",
                        *x.args,
                        f"method={m}",
                        "seed=0",
                        f"optim.epochs={x.teacher_epochs}",
                        f"train.compile={self.s.teacher_compile}",
                        f"out_dir={out}",
                    ],
                )
            )
        return jobs[0]

    def paper_arms(self, x: Experiment, teacher: threading.Thread | None) -> None:
        """Phase 3: a-d from the teacher's export, every seed."""
        s, c = self.s, [*x.args, f"train.compile={self.s.stage_compile}"]
        more = [f"optim.epochs={x.stage1 + x.stage2}", f"optim.lr={s.cont_lr}"]
        more.append(f"optim.warmup_epochs={s.cont_warmup}")
        arms = ["sdclr"] + (["bcl_d"] if s.sizing.bcl_d == "continued" else [])
        for seed in s.seeds:
            for m in arms:
                out = x.folder / f"{m}_continued" / f"seed{seed}"
                self.run(
                    f"{x.tag}_{m}_continued_seed{seed}",
                    out,
                    [
                        *self.fassl,
                        "pretrain",
                        *c,
                        f"method={m}",
                        f"seed={seed}",
                        f"train.init_from={x.teacher}",
                        *more,
                        f"out_dir={out}",
                    ],
                )
        if not self.wait_for(x.folder / "sdclr" / "seed0" / "results.json", teacher):
            return
        firsts = []
        for seed in s.seeds:
            out = x.folder / "fassl_from_sdclr" / f"seed{seed}"
            firsts.append(
                self.run(
                    f"{x.tag}_fassl_from_sdclr_seed{seed}",
                    out,
                    [
                        *self.fassl,
                        "pipeline",
                        *c,
                        f"seed={seed}",
                        f"pipeline.teacher_checkpoint={x.teacher}",
                        f"out_dir={out}",
                    ],
                )
            )
        for seed, first in zip(s.seeds, firsts, strict=True):  # phi = 1 from the same stage 1
            stage1 = x.folder / "fassl_from_sdclr" / f"seed{seed}" / "prototypes"
            stage1 = stage1 / "encoder.safetensors"
            if not self.wait_for(stage1, first):
                continue
            out = x.folder / "fassl_from_sdclr_phi1" / f"seed{seed}"
            self.run(
                f"{x.tag}_fassl_from_sdclr_phi1_seed{seed}",
                out,
                [
                    *self.fassl,
                    "pipeline",
                    *c,
                    f"seed={seed}",
                    "rebalance.weight=none",
                    f"pipeline.prototypes_checkpoint={stage1}",
                    f"out_dir={out}",
                ],
            )

    def encoders(self, x: Experiment) -> list[tuple[str, str, Path]]:
        """(arm, seed, export) of every encoder of the experiment."""
        out = [("sdclr", "0", x.teacher)]
        if self.s.sizing.bcl_d == "scratch":
            out.append(("bcl_d", "0", x.folder / "bcl_d" / "seed0" / "encoder.safetensors"))
        for seed in self.s.seeds:
            for m in ("fassl_from_sdclr", "fassl_from_sdclr_phi1"):
                out.append(
                    (m, seed, x.folder / m / f"seed{seed}" / "rebalance" / "encoder.safetensors")
                )
            for m in ("sdclr_continued", "bcl_d_continued"):
                out.append((m, seed, x.folder / m / f"seed{seed}" / "encoder.safetensors"))
        return out

    def fast_probes(self, x: Experiment) -> None:
        for m, seed, export in self.encoders(x):
            if export.is_file():
                out = self.s.runs / "fast" / x.folder.name / m / f"seed{seed}"
                self.run(
                    f"{x.tag}_fast_{m}_seed{seed}",
                    out,
                    [
                        *self.fassl,
                        "eval",
                        str(export),
                        "--config",
                        *x.args,
                        "probe.variant=fast",
                        f"seed={seed}",
                        f"out_dir={out}",
                    ],
                )

    def from_scratch(self, x: Experiment, methods: list[str]) -> None:
        """``fassl compare`` of each method, seed 0, for the teacher's and the stages'
        epochs (BCL-D: the teacher's, beside it in the tables)."""
        for m in methods:
            n = x.teacher_epochs if m == "bcl_d" else x.teacher_epochs + x.stage1 + x.stage2
            self.run(
                f"{x.tag}_{m}_seed0",
                x.folder / m / "seed0",
                [
                    *self.fassl,
                    "compare",
                    *x.args,
                    f"out_dir={x.folder}",
                    f"compare.methods=[{m}]",
                    "compare.seeds=[0]",
                    f"compare.baseline_epochs={n}",
                    f"train.compile={self.s.teacher_compile}",
                ],
            )

    def ldam(self, x: Experiment) -> None:
        out = x.folder / "ldam_drw_ssp" / "seed0"
        self.run(
            f"{x.tag}_ldam_drw_ssp_seed0",
            out,
            [
                *self.fassl,
                "pretrain",
                *x.args,
                "method=ldam_drw",
                "seed=0",
                f"train.init_from={x.teacher}",
                f"optim.epochs={x.stage1 + x.stage2}",
                f"optim.lr={self.s.cont_lr}",
                f"optim.warmup_epochs={self.s.cont_warmup}",
                f"train.compile={self.s.stage_compile}",
                f"out_dir={out}",
            ],
        )


# ---- the whole script --------------------------------------------------------------
def main(argv: list[str], environ: Mapping[str, str]) -> int:
    s = settings_from(argv, environ)
    check_inputs(s)
    env = dict(environ)
    fassl, preflight = prepare(s, env)
    logs = s.runs / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise Refused(f"cannot create {logs} ({err})") from err
    (logs / "preflight.txt").write_text(preflight + "\n")
    with (logs / "fassl_check.log").open("w") as log:
        check = subprocess.run([*fassl, "--help"], stdout=subprocess.DEVNULL, stderr=log, env=env)
    if check.returncode != 0:
        last = ((logs / "fassl_check.log").read_text().strip().splitlines() or [""])[-1]
        raise Refused(
            f"'{shlex.join(fassl)}' does not run ({last}); set FASSL, or WHEELS for missing "
            "packages"
        )
    (logs / "runs.tsv").write_text("")
    print(f"== pre-flight: {preflight}", flush=True)

    common = [f"data.root={s.data_root}"] if s.data_root else []
    common += [f"data.sdclr_splits={s.splits}"] if s.splits else []
    common += [*s.device_args, "train.progress=false"]
    if s.tiny:
        common += TINY_OVERRIDES + (TINY_DIGITS if s.tiny_data != "real" else [])
    r = Runner(s, fassl, env, [*common, *s.extra])
    z = s.sizing

    mps_started = False
    if s.parallel and s.mps != "0" and not s.tiny and shutil.which("nvidia-cuda-mps-control"):
        # before the bench, so that it measures what the teacher will see
        mps_started = subprocess.run(["nvidia-cuda-mps-control", "-d"]).returncode == 0

    plan_json, bench_json = s.runs / "plan.json", s.runs / "bench" / "bench_sdclr.json"
    for stale in (plan_json, bench_json):  # a rate is this start's own or none
        stale.unlink(missing_ok=True)
    r.phase = "bench"
    r.run(
        "bench",
        s.runs / "bench",
        [
            "timeout",
            "-k",
            "5",
            s.bench_timeout_s,
            *fassl,
            "bench",
            "--method",
            "sdclr",
            *s.bench_args,
            "--compile",
            s.teacher_compile,
            "--config",
            "cifar10_lt_paper_width",
            "--out",
            str(s.runs / "bench"),
            "--name",
            "bench_sdclr",
        ],
    )
    r.wait()
    try:
        row = json.loads(bench_json.read_text())["rows"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        row = None
        why = f"bench gave no rate (exit {r.rcs.get('bench', 'none')}, {type(err).__name__}"
    plan = plan_teacher(z, row, r.elapsed())
    if row is None:
        plan["notes"].insert(0, why + "; logs/bench.log)")
    plan_json.write_text(json.dumps(plan, indent=2) + "\n")
    t, s1, s2 = plan["epochs"], z.stage1, z.stage2
    print(f"== plan: teacher {t} epochs ({r.elapsed()} s elapsed; {plan_json})", flush=True)

    timing: dict[str, int] = {}

    def main_experiment(split: int) -> None:  # phases 2-3 of a split
        nonlocal s1, s2, plan
        t0 = r.elapsed()
        x = r.experiment(
            f"split{split}", f"split{split}", "cifar10_lt_paper_width", split, t, s1, s2
        )
        r.phase = f"teacher_split{split}"
        teacher = r.teacher(x)
        if not r.wait_for(x.teacher, teacher):
            r.wait()
            return
        timing["teacher"] = r.elapsed() - t0
        if split == 1:  # the stages fit what the teacher left
            plan = plan_stages(z, plan, t, timing["teacher"], r.elapsed())
            plan_json.write_text(json.dumps(plan, indent=2) + "\n")
            s1, s2 = plan["stages"]["stage_epochs"]
            x = r.experiment("split1", "split1", "cifar10_lt_paper_width", 1, t, s1, s2)
        r.phase = f"paper_structure_split{split}"
        r.paper_arms(x, teacher)
        r.wait()
        timing["main"] = r.elapsed() - t0

    def split1() -> Experiment:
        return r.experiment("split1", "split1", "cifar10_lt_paper_width", 1, t, s1, s2)

    main_experiment(1)
    main_s, teacher_s = timing.get("main", 999999), timing.get("teacher", 999999)
    r.phase = "fast_probes_split1"
    if r.fits(r.phase, int(z.start_s) + 30):
        r.fast_probes(split1())
    r.wait()
    r.phase = "cpu_scale_split1"
    c_t, c_1, c_2 = s.cpu_epochs
    if r.fits(r.phase, main_s * (c_t + c_1 + c_2) // (t + s1 + s2)):
        x = r.experiment("cpu1", "cpu_scale_split1", "cifar10_lt_cpu", 1, c_t, c_1, c_2)
        teacher = r.teacher(x)
        if r.wait_for(x.teacher, teacher):
            r.paper_arms(x, teacher)
        r.wait()
    r.phase = "scratch_split1"
    if r.fits(r.phase, teacher_s * (t + s1 + s2) // t):
        r.from_scratch(split1(), ["simclr", "byol"])
    r.wait()
    if s.split2 and r.fits("split2", main_s):
        main_experiment(2)
        teacher_s = timing.get("teacher", teacher_s)
    r.phase = "rebalancers_split1"
    if r.fits(r.phase, teacher_s * 3 * (t + s1 + s2) // t):
        # BCL-D for the teacher's epochs; with BCL_D=scratch bcl_d/seed0 holds phase 2's
        methods = ["bcl_i_common", "simclr_ts"]
        methods[1:1] = [] if z.bcl_d == "scratch" else ["bcl_d"]
        r.from_scratch(split1(), methods)
        r.ldam(split1())
    r.wait()

    print(f"== tables ({r.elapsed()} s elapsed)", flush=True)
    for d in TABLE_DIRS:
        if (s.runs / d).is_dir():
            paper = ["--paper"] if d.startswith("split") else []
            with (logs / f"tables_{d.replace('/', '_')}.log").open("w") as log:
                subprocess.run(
                    [*fassl, "tables", str(s.runs / d), *paper],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
    if mps_started:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True)

    report = gather(s, plan_json, bench_json)
    try:
        write_summary(s, report, plan_json, argv[1:], t, s1, s2, mps_started)
    except Exception as err:
        with (report / "summary.md").open("a") as f:
            f.write(f"summary.md could not be written ({type(err).__name__}: {err})\n")
    pack = pack_report(s, report)
    size = pack.stat().st_size
    print(f"== done in {r.elapsed()} s: {pack} ({size / 1024:.0f}K)", flush=True)
    return 0


def gather(s: Settings, plan_json: Path, bench_json: Path) -> Path:
    """The report's small files, every number read from this machine's runs."""
    report = s.runs / "report"
    shutil.rmtree(report, ignore_errors=True)
    for sub in ("results", "tables", "logs", "metrics", "analysis"):
        (report / sub).mkdir(parents=True)
    logs = s.runs / "logs"
    for line in (logs / "runs.tsv").read_text().splitlines():
        name, folder = line.split("\t")[1:3]
        d = Path(folder)
        if (d / "results.json").is_file():
            shutil.copy(d / "results.json", report / "results" / f"{name}.json")
        if (logs / f"{name}.log").is_file():
            tail = (logs / f"{name}.log").read_text(errors="replace").splitlines()[-40:]
            (report / "logs" / f"{name}.tail").write_text("".join(x + "\n" for x in tail))
        for f in sorted(d.glob("analysis_*.md")) if folder != "-" else []:
            shutil.copy(f, report / "analysis" / f"{name}.{f.name}")
    for d in TABLE_DIRS:
        for f in ("comparison.md", "comparison.csv", "weights.md"):
            if (s.runs / d / f).is_file():
                shutil.copy(s.runs / d / f, report / "tables" / f"{d.replace('/', '_')}.{f}")
    for f in (logs / "runs.tsv", logs / "preflight.txt", plan_json, bench_json):
        if f.is_file():
            shutil.copy(f, report)
    if bench_json.with_suffix(".md").is_file():
        shutil.copy(bench_json.with_suffix(".md"), report)
    (report / "nvidia-smi.txt").write_text(command_output(["nvidia-smi"]) or "no nvidia-smi\n")
    return report


def command_output(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def write_summary(
    s: Settings,
    report: Path,
    plan_json: Path,
    extra: list[str],
    t: int,
    s1: int,
    s2: int,
    mps_started: bool,
) -> None:
    """summary.md: the machine, the epochs, the plan against the wall clock, every run."""
    gpu_query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version"]
    gpu = command_output([*gpu_query, "--format=csv,noheader"])
    gpu = gpu or "none found (nvidia-smi absent or failing)"
    preflight = (s.runs / "logs" / "preflight.txt").read_text().strip()
    plan = json.loads(plan_json.read_text()) if plan_json.is_file() else {}
    rows = [x.split("\t") for x in (s.runs / "logs" / "runs.tsv").read_text().splitlines()]
    cont, bcl = s1 + s2, s.sizing.bcl_d
    stamp = time.strftime("%F %H:%M UTC", time.gmtime())
    data = (
        "- data: scikit-learn digits, data.split = seed of the class ranking (TINY)"
        if s.tiny and s.tiny_data != "real"
        else f"- data: CIFAR-10 (JPEG copy) {s.data_root}, SDCLR's split 1 from {s.splits} "
        "(split 2 in the split2 rows)"
    )
    out = [
        f"# CIFAR-10-LT at the paper's width: {stamp}",
        "",
        f"- GPU: {gpu}",
        f"- pre-flight: {preflight}; CPUs: {os.cpu_count()}",
        f"- command: scripts/reproduce_paper_width.py {s.runs} {' '.join(extra)}",
        f"- TINY={int(s.tiny)} (1: width 4, 1-2 epochs: a check of the script, not a result)",
        f"- epochs: teacher {t}, stage 1 {s1}, stage 2 {s2}, SDCLR / BCL-D continued {cont} "
        f"(lr {s.cont_lr}), SimCLR/BYOL from scratch {t + cont}; CPU-scale "
        f"(teacher / stage 1 / stage 2): {' / '.join(map(str, s.cpu_epochs))}",
        f"- seeds of the arms: {' '.join(s.seeds)}; teacher seed 0",
        data,
        f"- budget {s.sizing.budget_s:g} s; concurrent processes: {s.parallel}; MPS started "
        f"by the script: {mps_started}; train.compile teacher {s.teacher_compile}, other "
        f"runs {s.stage_compile}",
        "",
        "## Arms of split1: FASSL as the paper composes it",
        "",
        f"- `sdclr`: the SDCLR teacher, {t} epochs from scratch, seed 0",
        f"- `fassl_from_sdclr`: FASSL stages 1 + 2 ({s1} + {s2} epochs) on the teacher's export",
        "- `fassl_from_sdclr_phi1`: stage 2 with phi = 1 from the same stage 1",
        f"- `sdclr_continued`: the teacher's export trained {cont} more epochs at stage 2's "
        "lr (equal extra compute)",
    ]
    if bcl == "continued":
        out.append(
            f"- `bcl_d_continued`: BCL-D (the reference's defaults) from the teacher's "
            f"export for {cont} epochs at the same lr, against `sdclr_continued`"
        )
    elif bcl == "scratch":
        out.append(
            f"- `bcl_d`: BCL-D (the reference's defaults) from scratch for {t} epochs "
            "beside the teacher, against `sdclr`"
        )
    out += ["", "## Plan: the teacher's epochs sized from the bench", ""]
    if plan:

        def fmt(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.1f}"

        bench = plan.get("bench", {})
        out += [
            f"- bench (SDCLR; {plan.get('epoch_images')} images an epoch): step "
            f"{fmt(bench.get('step_img_s'))} img/s, epoch "
            f"{fmt(bench.get('recipe_epoch_img_s'))} img/s; rate used "
            f"{fmt(plan.get('rate_img_s'))} x safety {plan.get('safety')}",
            f"- epoch {fmt(plan.get('epoch_s'))} s; planned: arms after the teacher "
            f"{fmt(plan.get('tail_s'))} s, teacher {fmt(plan.get('teacher_s'))} s "
            f"(from {fmt(plan.get('elapsed_s'))} s elapsed) -> {plan.get('epochs')} epochs; "
            f"costs {plan.get('costs')}, start {plan.get('start_s')} s, probe "
            f"{plan.get('probe_s')} s",
            *(f"- note: {n}" for n in plan.get("notes", [])),
        ]
        if "stages" in plan:
            st = plan["stages"]
            out.append(
                f"- actual: teacher's export after {fmt(st.get('teacher_s'))} s (epoch "
                f"{fmt(st.get('measured_epoch_s'))} s less START_S), "
                f"{fmt(st.get('room_s'))} s left, stages {st['stage_epochs']}"
            )
    else:
        out.append("- no plan.json")
    out += [
        "",
        "## Phases (seconds since the script started)",
        "",
        "| phase | first start | last end | wall clock | runs | exit codes |",
        "|---|---|---|---|---|---|",
    ]
    phases: dict[str, list[tuple[int, int, str]]] = {}
    for phase, _, _, t0, t1, rc in rows:
        phases.setdefault(phase, []).append((int(t0), int(t1), rc))
    for phase, items in phases.items():
        a, b = min(i[0] for i in items), max(i[1] for i in items)
        codes = " ".join(i[2] for i in items)
        out.append(f"| {phase} | {a} | {b} | {b - a} | {len(items)} | {codes} |")
    out += [
        "",
        "## Runs",
        "",
        "| run | exit | wall s | stage: epochs done, median img/s |",
        "|---|---|---|---|",
    ]
    for _, name, d, t0, t1, rc in rows:
        stages = []
        for m in sorted(Path(d).glob("**/metrics.jsonl")) if d != "-" else []:
            lines = m.read_text().splitlines()
            ep = [x for x in map(json.loads, lines) if x.get("kind") == "epoch"]
            if ep:
                stage = "train" if m.parent == Path(d) else m.parent.name
                (report / "metrics" / f"{name}.{stage}.epochs.jsonl").write_text(
                    "".join(json.dumps(x) + "\n" for x in ep)
                )
                rate = statistics.median(x["img_per_s"] for x in ep)
                stages.append(f"{stage}: {ep[-1]['epoch']}, {rate:.0f}")
        out.append(f"| {name} | {rc} | {int(t1) - int(t0)} | {'; '.join(stages)} |")
    out += ["", "## Tables (`fassl tables`, computed from this machine's results.json files)", ""]
    for f in sorted((report / "tables").glob("*.comparison.md")):
        out += [f"### {f.name.removesuffix('.comparison.md')}", "", f.read_text(), ""]
    out += fassl_sections(s)
    (report / "summary.md").write_text("\n".join(out) + "\n")


def fassl_sections(s: Settings) -> list[str]:
    """The BCL-D - SDCLR continued table and the paper's rows: from fassl itself, with
    the source and the wheels the runs used on the path."""
    sys.path[:0] = [str(SRC), "/tmp/fassl-site"]
    out: list[str] = []
    try:  # the tables pair fassl_from_sdclr and sdclr_continued; this pair is the script's
        from fassl.compare.run import collect_runs
        from fassl.compare.tables import difference_tables

        for split in ("split1", "split2"):
            if (s.runs / split).is_dir():
                pairs = [("bcl_d_continued", "sdclr_continued")]
                text = difference_tables(collect_runs(s.runs / split), pairs)
                if text:
                    out += [f"### {split}: BCL-D continued against SDCLR continued", "", text]
    except Exception as err:
        out.append(f"- (BCL-D continued - SDCLR continued not computed: {err})")
    out += [
        "## Published reference",
        "",
        "The paper's CIFAR-10-LT rows (ResNet-18, SDCLR's probe), All / Rare / Medium / "
        "Frequent / Std; also the italic rows of the split tables above:",
        "",
    ]
    try:
        from fassl.compare.tables import PAPER_CIFAR10_LT

        for setting, methods in PAPER_CIFAR10_LT.items():
            for m, r in methods.items():
                keys = ("all", "rare", "medium", "frequent", "std")
                out.append(f"- {setting}, {m}: {' / '.join(f'{r[c]:.2f}' for c in keys)}")
    except Exception as err:
        out.append(f"- (fassl.report not importable: {err})")
    out += [
        "",
        "SDCLR's own paper, CIFAR-10-LT, 2,000 epochs, standard probe, mean over its five "
        "splits: Many / Medium / Few = 86.44 / 81.84 / 76.23.",
    ]
    return out


def pack_report(s: Settings, report: Path) -> Path:
    """PACK_TO/paper_width_report.tar.gz under MAX_PACK_BYTES (with summary.md beside
    it): the largest optional files dropped, each named in summary.md."""
    s.pack_to.mkdir(parents=True, exist_ok=True)
    pack = s.pack_to / "paper_width_report.tar.gz"
    summary = report / "summary.md"
    if not summary.is_file():
        summary.write_text("")

    def write() -> None:
        with tarfile.open(pack, "w:gz") as tar:
            tar.add(report, arcname="report")

    write()
    while pack.stat().st_size + summary.stat().st_size > s.max_pack_bytes:
        optional = [f for d in ("logs", "metrics", "analysis") for f in (report / d).rglob("*")]
        files = [f for f in optional if f.is_file()]
        if not files:
            break
        big = max(files, key=lambda f: f.stat().st_size)
        with summary.open("a") as f:
            f.write(
                f"- dropped from the pack (over {s.max_pack_bytes} bytes): "
                f"{big.relative_to(report)}\n"
            )
        big.unlink()
        write()
    shutil.copy(summary, s.pack_to / "summary.md")
    return pack


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:], os.environ))
    except Refused as err:
        print(f"reproduce_paper_width: error: {err}", file=sys.stderr)
        sys.exit(2)
