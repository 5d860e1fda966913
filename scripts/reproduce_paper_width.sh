#!/usr/bin/env bash
# CIFAR-10-LT at the paper's width (configs/cifar10_lt_paper_width.yaml: ResNet-18 width
# 64, batch 512, bf16) on SDCLR's published split 1, in ONE command of at most 10 minutes
# on one GPU (H100/H200). The GPU machine starts bare every time and only small files
# come back, so every phase below runs, and is reported, within that one command.
#
#   0. pre-flight: torch with CUDA, safetensors, matplotlib and fassl import; DATA_ROOT
#      and SPLITS exist. Fails at once, with one line naming what is missing.
#   1. bench: `fassl bench`, 20 timed steps (and two epochs) of SDCLR at the recipe's
#      width and batch; its rate sizes the teacher (below) so that phases 2-3 end
#      inside BUDGET_S. If it fails, the teacher gets FALLBACK_EPOCHS and summary.md
#      says so.                                                      -> RUNS/bench
#   2. the SDCLR teacher, seed 0, T epochs                    -> RUNS/split1/sdclr/seed0
#   3. FASSL as the paper composes it (Algorithm 1 starts its teacher from SDCLR), every
#      arm from the teacher's export, for each seed of SEEDS, as concurrent processes.
#      By priority:
#      a. fassl_from_sdclr: stages 1 (STAGE1_EPOCHS) and 2 (STAGE2_EPOCHS) on the export
#         (pipeline.teacher_checkpoint), the configured weight (knn, strength 0.5);
#      b. fassl_from_sdclr_phi1: stage 2 with phi = 1 from a's stage-1 checkpoint;
#      c. sdclr_continued: the export trained STAGE1 + STAGE2 more epochs at stage 2's
#         lr and warm-up (CONT_LR, CONT_WARMUP), so a - c is the two stages' gain at
#         equal extra compute;
#      d. bcl_d_continued: BCL-D with the reference's defaults (two operations a view,
#         BCL's magnitude, beta 0.97, the output-BN head) from the export, as long and
#         at the same lr as c, against c. BCL_D=scratch trains BCL-D from scratch for T
#         epochs beside the teacher instead (against it), BCL_D=0 leaves it out.
#      Started in the order c, d (at the export: they need nothing else), a (once the
#      teacher's own probe has written its results.json: the pipeline reads it rather
#      than probing the teacher a second time), b (at a's stage-1 export). Every encoder
#      gets SDCLR's augmented probe, standard and few-shot (the recipe's probe.variant=
#      sdclr). If the teacher ran long, the stages are shortened to what is left (the
#      same STAGE1 + STAGE2 for c and d), and summary.md says so.     -> RUNS/split1
# Then, each only when the wall clock so far says it fits in what is left, in order:
#   4. the fast probe (features extracted once) of the same encoders -> RUNS/fast/split1
#   5. the CPU-scale comparison (cifar10_lt_cpu: width 32, CPU_EPOCHS) on split 1, the
#      same arms                                                 -> RUNS/cpu_scale_split1
#   6. SimCLR and BYOL from scratch for T + STAGE1 + STAGE2 epochs, seed 0 -> RUNS/split1
#   7. split 2: phases 2-3 again (SPLIT2=1)                               -> RUNS/split2
#   8. the other label-free re-balancers, seed 0, from scratch for T + STAGE1 + STAGE2
#      epochs: BCL-I with the common augmentations (the paper's row), SimCLR with the
#      cosine temperature schedule, BCL-D (for T epochs, beside the teacher in the
#      tables); LDAM-DRW+SSP (from the teacher)                          -> RUNS/split1
# then `fassl tables` of each folder and a report of small files: each run's
# results.json, the tables, log tails, per-epoch throughput, the bench and the plan,
# summary.md (GPU, epochs, seeds, split, wall clock of every phase against the plan),
# packed into PACK_TO/paper_width_report.tar.gz (kept under MAX_PACK_BYTES by dropping
# the largest log tails, metrics and analyses) with a copy of summary.md beside it.
#
# The teacher's epochs (plan.json holds every term):
#   e      = images of an epoch / (the slower of the bench's step and epoch rates * SAFETY)
#   tail_s = START_S + 2 PROBE_S + e * max(COST_STAGE1 S1 + COST_STAGE2 S2,
#              seeds (COST_STAGE1 S1 + 2 COST_STAGE2 S2 + (1 + COST_BCL) (S1 + S2)) / MPS_GAIN)
#            (the teacher's probe, then a's stages and probe; the FASSL chain, or all the
#            arms' work on one shared GPU, whichever is longer; COST_BCL only with d)
#   T      = floor((BUDGET_S - RESERVE_S - elapsed - START_S - tail_s) / e'), clamped to
#            [T_MIN, T_MAX]; e' = e, or e * (1 + COST_BCL) / MPS_GAIN with BCL_D=scratch.
# The costs are SDCLR-epoch units, guesses until summary.md's planned-against-actual
# seconds of a first run give better ones.
#
#   DATA_ROOT=/path/to/cifar10-jpeg.tar.gz SPLITS=/path/to/sdclr-splits/cifar10 \
#     scripts/reproduce_paper_width.sh [RUNS] [key=value ...]
#
# DATA_ROOT: the CIFAR-10 JPEG copy, its .tar.gz or the extracted folder (required).
# SPLITS: SDCLR's index files for CIFAR-10 (sdclr-splits/cifar10; required).
# TEACHER_EPOCHS: a fixed T (unset: sized as above). STAGE1_EPOCHS (5), STAGE2_EPOCHS
#   (20): the stages are this project's choice (the paper gives none).
# SEEDS ("0"): seeds of the arms; the teacher is seed 0. Each further seed adds a whole
#   tail of concurrent arms and leaves the teacher far fewer epochs.
# BUDGET_S (540; 0 = none): runs are stopped at BUDGET_S - RESERVE_S (40) seconds, the
#   rest is for the tables and the report. A run that would start with less than
#   MIN_RUN_S (20) seconds left is skipped.
# Sizing: SAFETY (0.9), START_S (30: process start, data, first steps), PROBE_S (60: one
#   SDCLR probe), COST_STAGE1 (1.0), COST_STAGE2 (1.5), COST_BCL (1.2), MPS_GAIN (1.5
#   with concurrent processes, else 1), T_MIN (20), T_MAX (500, the recipe's),
#   FALLBACK_EPOCHS (60), BENCH_TIMEOUT_S (150).
# PARALLEL (1): independent runs as concurrent processes. MPS (auto): start the CUDA MPS
#   daemon (nvidia-cuda-mps-control -d) so that their kernels share the GPU, and stop it
#   at the end if this script started it.
# TEACHER_COMPILE (eager) / STAGE_COMPILE (eager): train.compile of the teacher (and the
#   bench) and of the other runs. Compilation's fixed cost, paid by the bench and again
#   by the teacher, is not sure to be won back in a teacher of a few minutes.
# CONT_LR (0.05), CONT_WARMUP (2): c's and d's lr and warm-up (the recipe's stage 2).
# CPU_EPOCHS ("25 5 15"): teacher, stage 1 and stage 2 epochs of phase 5.
# SPLIT2 (1): try phase 7. PACK_TO: where the tar.gz goes (default $OUT if set, else
#   RUNS). MAX_PACK_BYTES (15 MiB).
# PY: the interpreter the pre-flight checks and that runs fassl (.venv/bin/python if
#   there is one, else python3). FASSL: another command for fassl (default: PY -m
#   fassl, with src/ on PYTHONPATH). Run from the repository root.
# WHEELS: a folder of wheels (e.g. omegaconf) installed into /tmp/fassl-site first, for a
#   machine that has torch but not every dependency.
# TINY=1: width 4, 1-2 epochs, scikit-learn's digits, any device, no budget: the whole
#   script in minutes on a CPU, to check it end to end. TINY_DATA=real keeps
#   DATA_ROOT/SPLITS.
set -u
RUNS=${1:-runs/paper_width}
shift || true
EXTRA=("$@")
TINY=${TINY:-0}
die() { echo "reproduce_paper_width: error: $*" >&2; exit 2; }

if [ "$TINY" = 1 ]; then
  T_FIXED=${TEACHER_EPOCHS:-2} S1=${STAGE1_EPOCHS:-1} S2=${STAGE2_EPOCHS:-1}
  BUDGET_S=${BUDGET_S:-0} CONT_WARMUP=${CONT_WARMUP:-0} CPU_EPOCHS=${CPU_EPOCHS:-2 1 1}
  BATCH=64 N_IMAGES=256 DEVICE_ARGS=()
  BENCH_ARGS=(--width 4 --batch 64 --images 256 --steps 2 --epochs 2 --device auto)
else
  T_FIXED=${TEACHER_EPOCHS:-} S1=${STAGE1_EPOCHS:-5} S2=${STAGE2_EPOCHS:-20}
  BUDGET_S=${BUDGET_S:-540} CONT_WARMUP=${CONT_WARMUP:-2} CPU_EPOCHS=${CPU_EPOCHS:-25 5 15}
  # the recipe's batch; 11,165 images: split 1's long-tailed pre-training set
  BATCH=512 N_IMAGES=11165 DEVICE_ARGS=(train.device=cuda)
  BENCH_ARGS=(--width 64 --batch 512 --images 11165 --steps 20 --epochs 2 --device cuda
    --precision bf16)
fi
SEEDS=${SEEDS:-0}
RESERVE_S=${RESERVE_S:-40}
MIN_RUN_S=${MIN_RUN_S:-20}
PARALLEL=${PARALLEL:-1}
MPS=${MPS:-auto}
TEACHER_COMPILE=${TEACHER_COMPILE:-eager}
STAGE_COMPILE=${STAGE_COMPILE:-eager}
CONT_LR=${CONT_LR:-0.05}
BCL_D=${BCL_D:-continued}
SPLIT2=${SPLIT2:-1}
PACK_TO=${PACK_TO:-${OUT:-$RUNS}}
MAX_PACK_BYTES=${MAX_PACK_BYTES:-15728640}
BENCH_TIMEOUT_S=${BENCH_TIMEOUT_S:-150}
if [ "$PARALLEL" = 1 ]; then DEFAULT_GAIN=1.5; else DEFAULT_GAIN=1; fi
export SAFETY=${SAFETY:-0.9} START_S=${START_S:-30} PROBE_S=${PROBE_S:-60} \
  COST_STAGE1=${COST_STAGE1:-1.0} COST_STAGE2=${COST_STAGE2:-1.5} \
  COST_BCL=${COST_BCL:-1.2} MPS_GAIN=${MPS_GAIN:-$DEFAULT_GAIN} T_MIN=${T_MIN:-20} \
  T_MAX=${T_MAX:-500} FALLBACK_EPOCHS=${FALLBACK_EPOCHS:-60}
case $BCL_D in continued | scratch | 0) ;; *) die "BCL_D=$BCL_D: continued, scratch or 0" ;; esac
# Concurrent processes with a thread per core each wait on one another's threads.
if [ "$TINY" = 1 ]; then export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
elif [ "$PARALLEL" = 1 ]; then export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}; fi
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
START=$(date +%s)

check_inputs() {  # fail before any GPU time is spent
  if [ "$TINY" = 1 ] && [ "${TINY_DATA:-digits}" != real ]; then return 0; fi
  [ -n "${DATA_ROOT:-}" ] || die "DATA_ROOT is not set: give the CIFAR-10 JPEG copy," \
    "e.g. DATA_ROOT=../shared/data/cifar10-jpeg.tar.gz (or its extracted folder)"
  [ -e "$DATA_ROOT" ] || die "DATA_ROOT=$DATA_ROOT does not exist (the CIFAR-10 JPEG copy:" \
    "cifar10-jpeg.tar.gz or its extracted folder)"
  [ -n "${SPLITS:-}" ] || die "SPLITS is not set: give SDCLR's CIFAR-10 index files," \
    "e.g. SPLITS=../shared/data/sdclr-splits/cifar10"
  local f
  for f in trainIdxList.npy valIdxList.npy cifar10_train_labels.npy split1_D_i.npy \
    split1_S_b.npy; do
    [ -f "$SPLITS/$f" ] || die "SPLITS=$SPLITS: $f not found (SDCLR's sdclr-splits/cifar10)"
  done
}

setup_python() {  # WHEELS installed, fassl's source importable by PY
  if [ -n "${WHEELS:-}" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/fassl-site \
      "$WHEELS"/*.whl || die "WHEELS=$WHEELS: could not install its wheels"
    export PYTHONPATH=/tmp/fassl-site${PYTHONPATH:+:$PYTHONPATH}
  fi
  if [ -z "${FASSL:-}" ]; then  # the interpreter the pre-flight checks is the one that runs
    FASSL="$PY -m fassl"
    export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
  fi
}

preflight() {  # every import the runs need, and CUDA: one line naming what is missing
  PREFLIGHT=$(NEED_CUDA=$((TINY != 1)) "$PY" - 2>&1 <<'EOF'
import importlib, os, sys
missing = []
for name in ("torch", "safetensors.torch", "matplotlib", "fassl.cli"):
    try:
        importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - any failure to import is the answer
        missing.append(f"{name} ({type(err).__name__}: {err})".replace("\n", " "))
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
EOF
) || die "pre-flight: $(echo "$PREFLIGHT" | tail -n 1)"
  PREFLIGHT=$(echo "$PREFLIGHT" | tail -n 1)  # without any warning printed before it
}

check_inputs
setup_python
preflight
mkdir -p "$RUNS/logs" || die "cannot create $RUNS/logs"
echo "$PREFLIGHT" >"$RUNS/logs/preflight.txt"
$FASSL --help >/dev/null 2>"$RUNS/logs/fassl_check.log" || die "'$FASSL' does not run" \
  "($(tail -n 1 "$RUNS/logs/fassl_check.log")); set FASSL, or WHEELS for missing packages"
: >"$RUNS/logs/runs.tsv"
echo "== pre-flight: $PREFLIGHT"

TINY_ARGS=()
if [ "$TINY" = 1 ]; then
  TINY_ARGS=(model.width=4 optim.batch_size=64 pipeline.teacher.batch_size=64
    pipeline.prototypes.batch_size=64 pipeline.rebalance.batch_size=64
    optim.warmup_epochs=0 pipeline.prototypes.warmup_epochs=0
    pipeline.rebalance.warmup_epochs=0 prototypes.num_prototypes=16 train.knn_every=0
    probe.standard_epochs=1 probe.few_shot_epochs=1 probe.fast_epochs=3 probe.knn_k=20)
  if [ "${TINY_DATA:-digits}" != real ]; then
    TINY_ARGS+=(data.dataset=digits "data.root=''" "data.sdclr_splits=''" data.imbalance=10
      data.val_per_class=10 data.few_shot_fraction=0.1)
  fi
fi
DATA_ARGS=()
[ -n "${DATA_ROOT:-}" ] && DATA_ARGS+=("data.root=$DATA_ROOT")
[ -n "${SPLITS:-}" ] && DATA_ARGS+=("data.sdclr_splits=$SPLITS")
COMMON=("${DATA_ARGS[@]}" "${DEVICE_ARGS[@]}" train.progress=false "${TINY_ARGS[@]}"
  "${EXTRA[@]}")

elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((BUDGET_S - $(elapsed) - RESERVE_S)); }
note() {  # note PHASE NAME DIR RC: a row of runs.tsv without a run
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(elapsed)" "$(elapsed)" "$4" \
    >>"$RUNS/logs/runs.tsv"
}

run() {  # run NAME DIR COMMAND...: logged, timed, limited by the budget; in the
  # background with PARALLEL=1 (its pid in LAST_PID). Its row in runs.tsv: phase name
  # dir start end rc.
  local name=$1 dir=$2
  shift 2
  LAST_PID=
  local limit=()
  if [ "$BUDGET_S" -gt 0 ]; then
    if [ "$(left)" -lt "$MIN_RUN_S" ]; then
      echo "== $name: skipped, budget spent"
      note "$PHASE" "$name" "$dir" skipped_budget
      return 1
    fi
    limit=(timeout -k 10 "$(left)")
  fi
  echo "== $name ($(elapsed) s elapsed)"
  local phase=$PHASE
  _job() {
    local t0 rc
    t0=$(elapsed)
    "${limit[@]}" "$@" >"$RUNS/logs/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$phase" "$name" "$dir" "$t0" "$(elapsed)" "$rc" \
      >>"$RUNS/logs/runs.tsv"
    echo "== $name: exit $rc ($(elapsed) s elapsed)"
  }
  if [ "$PARALLEL" = 1 ]; then _job "$@" & LAST_PID=$!; else _job "$@"; fi
}

wait_for() {  # wait_for FILE [PID]: true once FILE exists; false once the run with PID
  # (without one: every running job) has ended without writing it
  local pid=${2:-}
  while [ ! -f "$1" ]; do
    if [ -n "$pid" ]; then
      kill -0 "$pid" 2>/dev/null || break
    elif [ -z "$(jobs -r)" ]; then
      break
    fi
    sleep 0.5
  done
  [ -f "$1" ]
}

export PLAN_JSON=$RUNS/plan.json BENCH_JSON=$RUNS/bench/bench_sdclr.json
plan() {  # plan teacher | plan stages: the sizing of the header; prints T, or "S1 S2"
  MODE=$1 BUDGET_S=$BUDGET_S RESERVE_S=$RESERVE_S ELAPSED=$(elapsed) S1=$S1 S2=$S2 \
    SEEDS=$SEEDS BCL_D=$BCL_D T_FIXED=$T_FIXED EPOCH_IMAGES=$((N_IMAGES / BATCH * BATCH)) \
    BENCH_RC=${BENCH_RC:-1} T=${T:-0} TEACHER_TRAIN_S=${TEACHER_S:-0} "$PY" - <<'EOF'
import json, math, os
from pathlib import Path

env = os.environ
num = lambda key: float(env[key])  # noqa: E731
path = Path(env["PLAN_JSON"])
plan = json.loads(path.read_text()) if path.is_file() else {}
seeds, bcl = len(env["SEEDS"].split()), env["BCL_D"]
c1, c2, cb, gain = (num(k) for k in ("COST_STAGE1", "COST_STAGE2", "COST_BCL", "MPS_GAIN"))
fixed_s = num("START_S") + 2 * num("PROBE_S")  # start; the teacher's probe, a's probe
room = num("BUDGET_S") - num("RESERVE_S") - num("ELAPSED")


def tail_epochs(s1, s2):
    """The arms' GPU time in teacher epochs: a's chain, or all arms' work shared."""
    chain = c1 * s1 + c2 * s2
    cont = 1 + (cb if bcl == "continued" else 0)
    work = seeds * (c1 * s1 + 2 * c2 * s2 + cont * (s1 + s2))
    return max(chain, work / gain)


if env["MODE"] == "teacher":
    s1, s2 = int(env["S1"]), int(env["S2"])
    notes, rate, row = [], None, {}
    try:
        row = json.loads(Path(env["BENCH_JSON"]).read_text())["rows"][0]
        rate = min(row[k] for k in ("step_img_s", "recipe_epoch_img_s") if row.get(k))
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        notes.append(f"bench gave no rate (exit {env['BENCH_RC']}, {type(err).__name__}; "
                     "logs/bench.log)")
    e = num("EPOCH_IMAGES") / (rate * num("SAFETY")) if rate else None
    tail_s = fixed_s + tail_epochs(s1, s2) * e if e else None
    share = max(1.0, (1 + cb) / gain) if bcl == "scratch" else 1.0
    teacher_s = room - num("START_S") - tail_s if e else None
    if env["T_FIXED"]:
        epochs = int(env["T_FIXED"])
        notes.append(f"TEACHER_EPOCHS={epochs} (fixed)")
    elif num("BUDGET_S") <= 0:
        epochs = int(num("T_MAX"))
        notes.append("no budget: T_MAX epochs")
    elif e is None:
        epochs = int(min(num("FALLBACK_EPOCHS"), num("T_MAX")))
        notes.append(f"fallback: a fixed {epochs} epochs, not sized")
    else:
        sized = math.floor(teacher_s / (e * share))
        epochs = int(min(max(sized, num("T_MIN")), num("T_MAX")))
        if sized < num("T_MIN"):
            notes.append(f"the budget fits {sized} epochs: raised to T_MIN, the arms may "
                         "not all finish")
        elif sized > num("T_MAX"):
            notes.append(f"the budget fits {sized} epochs: capped at T_MAX")
    plan = {
        "bench": {k: row.get(k) for k in ("step_img_s", "recipe_epoch_img_s", "warmup_s")},
        "rate_img_s": rate, "safety": num("SAFETY"), "epoch_images": int(num("EPOCH_IMAGES")),
        "epoch_s": e, "elapsed_s": num("ELAPSED"), "budget_s": num("BUDGET_S"),
        "reserve_s": num("RESERVE_S"), "start_s": num("START_S"), "probe_s": num("PROBE_S"),
        "costs": {"stage1": c1, "stage2": c2, "bcl": cb, "mps_gain": gain},
        "seeds": seeds, "bcl_d": bcl, "stage_epochs": [s1, s2], "tail_s": tail_s,
        "teacher_epoch_share": share, "teacher_s": teacher_s, "epochs": epochs,
        "t_min": num("T_MIN"), "t_max": num("T_MAX"), "notes": notes,
    }
    print(epochs)
else:  # stages, at the teacher's export: shorten them if the teacher ran long
    s1, s2 = plan.get("stage_epochs", [int(env["S1"]), int(env["S2"])])
    epochs, train_s = int(env["T"]), num("TEACHER_TRAIN_S")
    measured = (train_s - num("START_S")) / epochs if epochs and train_s > num("START_S") else None
    known = [x for x in (plan.get("epoch_s"), measured) if x]
    e = max(known) if known else None
    scale = (room - fixed_s) / (tail_epochs(s1, s2) * e) if e and num("BUDGET_S") > 0 else 1.0
    new = (s1, s2)
    if scale < 1:
        new = (max(1, math.floor(s1 * scale)), max(1, math.floor(s2 * scale)))
        plan.setdefault("notes", []).append(
            f"too little time left after the teacher: stages shortened from {s1} + {s2} "
            f"to {new[0]} + {new[1]} epochs ({room:.0f} s left at its export)")
    plan["stages"] = {"teacher_s": train_s, "measured_epoch_s": measured, "room_s": room,
                      "scale": scale, "stage_epochs": list(new)}
    print(*new)
path.write_text(json.dumps(plan, indent=2) + "\n")
EOF
}

# The experiment's recipe and overrides (A), folder (D), tag and lengths (ET ES1 ES2),
# set by use_experiment before the phase functions below run.
use_experiment() {  # use_experiment TAG DIR RECIPE SPLIT TEACHER STAGE1 STAGE2
  TAG=$1 D=$RUNS/$2 ET=$5 ES1=$6 ES2=$7
  A=("$3" "data.split=$4" "${COMMON[@]}" "pipeline.prototypes.epochs=$ES1"
    "pipeline.rebalance.epochs=$ES2")
  TEACHER=$D/sdclr/seed0/encoder.safetensors
}

teacher() {  # the SDCLR teacher (TEACHER_PID), and BCL-D from scratch beside it
  run "${TAG}_sdclr" "$D/sdclr/seed0" $FASSL pretrain "${A[@]}" method=sdclr seed=0 \
    "optim.epochs=$ET" "train.compile=$TEACHER_COMPILE" "out_dir=$D/sdclr/seed0"
  TEACHER_PID=$LAST_PID
  if [ "$BCL_D" = scratch ]; then
    run "${TAG}_bcl_d" "$D/bcl_d/seed0" $FASSL pretrain "${A[@]}" method=bcl_d seed=0 \
      "optim.epochs=$ET" "train.compile=$TEACHER_COMPILE" "out_dir=$D/bcl_d/seed0"
  fi
}

paper_arms() {  # phase 3: a-d of the header from the teacher's export, every seed
  local s p pid=() c=("${A[@]}" "train.compile=$STAGE_COMPILE")
  local more=("optim.epochs=$((ES1 + ES2))" "optim.lr=$CONT_LR"
    "optim.warmup_epochs=$CONT_WARMUP")
  for s in $SEEDS; do
    run "${TAG}_sdclr_continued_seed$s" "$D/sdclr_continued/seed$s" $FASSL pretrain \
      "${c[@]}" method=sdclr "seed=$s" "train.init_from=$TEACHER" "${more[@]}" \
      "out_dir=$D/sdclr_continued/seed$s"
    [ "$BCL_D" = continued ] && run "${TAG}_bcl_d_continued_seed$s" \
      "$D/bcl_d_continued/seed$s" $FASSL pretrain "${c[@]}" method=bcl_d "seed=$s" \
      "train.init_from=$TEACHER" "${more[@]}" "out_dir=$D/bcl_d_continued/seed$s"
  done
  wait_for "$D/sdclr/seed0/results.json" "${TEACHER_PID:-}" || return 1
  for s in $SEEDS; do
    run "${TAG}_fassl_from_sdclr_seed$s" "$D/fassl_from_sdclr/seed$s" $FASSL pipeline \
      "${c[@]}" "seed=$s" "pipeline.teacher_checkpoint=$TEACHER" \
      "out_dir=$D/fassl_from_sdclr/seed$s"
    pid+=("${LAST_PID:-}")
  done
  for s in $SEEDS; do  # phi = 1 from the same stage 1: only the weight differs
    p=$D/fassl_from_sdclr/seed$s/prototypes/encoder.safetensors
    wait_for "$p" "${pid[0]:-}" || { pid=("${pid[@]:1}"); continue; }
    pid=("${pid[@]:1}")
    run "${TAG}_fassl_from_sdclr_phi1_seed$s" "$D/fassl_from_sdclr_phi1/seed$s" $FASSL \
      pipeline "${c[@]}" "seed=$s" rebalance.weight=none "pipeline.prototypes_checkpoint=$p" \
      "out_dir=$D/fassl_from_sdclr_phi1/seed$s"
  done
}

main_experiment() {  # phases 2-3 of split $1 with the paper-width recipe
  local t0
  t0=$(elapsed)
  use_experiment "split$1" "split$1" cifar10_lt_paper_width "$1" "$T" "$S1" "$S2"
  PHASE=teacher_split$1
  teacher
  wait_for "$TEACHER" "${TEACHER_PID:-}" || { wait; return 1; }
  TEACHER_S=$(($(elapsed) - t0))
  if [ "$1" = 1 ]; then  # the stages fit what the teacher left
    local n1 n2
    read -r n1 n2 < <(plan stages)
    case "${n1:-x}${n2:-x}" in *[!0-9]*) ;; *) S1=$n1 S2=$n2 ;; esac
    use_experiment "split$1" "split$1" cifar10_lt_paper_width "$1" "$T" "$S1" "$S2"
  fi
  PHASE=paper_structure_split$1
  paper_arms
  wait
  MAIN_S=$(($(elapsed) - t0))
}

encoders() {  # "arm seed export" of every encoder of the experiment
  local s m
  echo "sdclr 0 $TEACHER"
  [ "$BCL_D" = scratch ] && echo "bcl_d 0 $D/bcl_d/seed0/encoder.safetensors"
  for s in $SEEDS; do
    for m in fassl_from_sdclr fassl_from_sdclr_phi1; do
      echo "$m $s $D/$m/seed$s/rebalance/encoder.safetensors"
    done
    for m in sdclr_continued bcl_d_continued; do
      echo "$m $s $D/$m/seed$s/encoder.safetensors"
    done
  done
}

fast_probes() {  # the fast probe of each encoder there is
  local m s e out fast=$RUNS/fast/$(basename "$D")
  while read -r m s e; do
    [ -f "$e" ] || continue
    out=$fast/$m/seed$s
    run "${TAG}_fast_${m}_seed$s" "$out" $FASSL eval "$e" --config "${A[@]}" \
      probe.variant=fast "seed=$s" "out_dir=$out"
  done < <(encoders)
}

scratch() {  # SimCLR and BYOL from scratch for the teacher's and the stages' epochs
  local n=$((ET + ES1 + ES2)) m
  for m in simclr byol; do
    run "${TAG}_${m}_seed0" "$D/$m/seed0" $FASSL compare "${A[@]}" "out_dir=$D" \
      "compare.methods=[$m]" "compare.seeds=[0]" "compare.baseline_epochs=$n" \
      "train.compile=$TEACHER_COMPILE"
  done
}

rebalancers() {  # phase 8: BCL-I (common), BCL-D, SimCLR + temperature schedule; LDAM+SSP
  local n=$((ET + ES1 + ES2)) m ms=(bcl_i_common bcl_d simclr_ts)
  [ "$BCL_D" = scratch ] && ms=(bcl_i_common simclr_ts)  # bcl_d/seed0 holds phase 2's
  for m in "${ms[@]}"; do
    # BCL-D for the teacher's epochs: the tables set it against the teacher (sdclr)
    [ "$m" = bcl_d ] && n=$ET
    run "${TAG}_${m}_seed0" "$D/$m/seed0" $FASSL compare "${A[@]}" "out_dir=$D" \
      "compare.methods=[$m]" "compare.seeds=[0]" "compare.baseline_epochs=$n" \
      "train.compile=$TEACHER_COMPILE"
    n=$((ET + ES1 + ES2))
  done
  run "${TAG}_ldam_drw_ssp_seed0" "$D/ldam_drw_ssp/seed0" $FASSL pretrain "${A[@]}" \
    method=ldam_drw seed=0 "train.init_from=$TEACHER" "optim.epochs=$((ES1 + ES2))" \
    "optim.lr=$CONT_LR" "optim.warmup_epochs=$CONT_WARMUP" \
    "train.compile=$STAGE_COMPILE" "out_dir=$D/ldam_drw_ssp/seed0"
}

fits() {  # fits PHASE NEED_S: enough budget left for a phase that needs NEED_S seconds
  if [ "$BUDGET_S" -eq 0 ] || [ "$(left)" -ge "$2" ]; then return 0; fi
  echo "== $1: skipped, needs about $2 s, $(left) s left"
  note "$1" "$1" - "skipped_needs_${2}s"
  return 1
}

start_mps() {
  MPS_STARTED=0
  [ "$PARALLEL" = 1 ] && [ "$MPS" != 0 ] && [ "$TINY" != 1 ] || return 0
  command -v nvidia-cuda-mps-control >/dev/null || return 0
  if nvidia-cuda-mps-control -d; then MPS_STARTED=1; fi
}

start_mps  # before the bench, so that it measures what the teacher will see
PHASE=bench
rm -f "$BENCH_JSON" "$PLAN_JSON"  # a rate is this start's own or none
run bench "$RUNS/bench" timeout -k 5 "$BENCH_TIMEOUT_S" $FASSL bench --method sdclr \
  "${BENCH_ARGS[@]}" --compile "$TEACHER_COMPILE" --config cifar10_lt_paper_width \
  --out "$RUNS/bench" --name bench_sdclr
if [ -n "${LAST_PID:-}" ]; then wait "$LAST_PID"; fi
BENCH_RC=$(awk -F'\t' '$2 == "bench" {print $6}' "$RUNS/logs/runs.tsv")
T=$(plan teacher)
case "${T:-x}" in *[!0-9]*) T=$FALLBACK_EPOCHS ;; esac
echo "== plan: teacher $T epochs ($(elapsed) s elapsed; $PLAN_JSON)"

main_experiment 1
use_experiment split1 split1 cifar10_lt_paper_width 1 "$T" "$S1" "$S2"
MAIN_S=${MAIN_S:-999999} TEACHER_S=${TEACHER_S:-999999}
PHASE=fast_probes_split1
fits "$PHASE" $((START_S + 30)) && fast_probes
wait
PHASE=cpu_scale_split1
read -r CPU_T CPU_S1 CPU_S2 <<<"$CPU_EPOCHS"
if fits "$PHASE" $((MAIN_S * (CPU_T + CPU_S1 + CPU_S2) / (T + S1 + S2))); then
  use_experiment cpu1 cpu_scale_split1 cifar10_lt_cpu 1 "$CPU_T" "$CPU_S1" "$CPU_S2"
  teacher
  wait_for "$TEACHER" "${TEACHER_PID:-}" && paper_arms
  wait
fi
PHASE=scratch_split1
use_experiment split1 split1 cifar10_lt_paper_width 1 "$T" "$S1" "$S2"
fits "$PHASE" $((TEACHER_S * (T + S1 + S2) / T)) && scratch
wait
if [ "$SPLIT2" = 1 ] && fits split2 "$MAIN_S"; then main_experiment 2; fi
PHASE=rebalancers_split1
use_experiment split1 split1 cifar10_lt_paper_width 1 "$T" "$S1" "$S2"
fits "$PHASE" $((TEACHER_S * 3 * (T + S1 + S2) / T)) && rebalancers
wait

echo "== tables ($(elapsed) s elapsed)"
for d in split1 split2 cpu_scale_split1 fast/split1 fast/split2; do
  [ -d "$RUNS/$d" ] || continue
  paper=()
  case $d in split*) paper=(--paper) ;; esac
  $FASSL tables "$RUNS/$d" "${paper[@]}" >"$RUNS/logs/tables_${d//\//_}.log" 2>&1
done
[ "${MPS_STARTED:-0}" = 1 ] && echo quit | nvidia-cuda-mps-control

# The report: small files only, every number read from this machine's runs.
REPORT=$RUNS/report
rm -rf "$REPORT"
mkdir -p "$REPORT"/{results,tables,logs,metrics,analysis}
while IFS=$'\t' read -r _ name dir _ _ _; do
  [ -f "$dir/results.json" ] && cp "$dir/results.json" "$REPORT/results/$name.json"
  [ -f "$RUNS/logs/$name.log" ] && tail -n 40 "$RUNS/logs/$name.log" >"$REPORT/logs/$name.tail"
  for f in "$dir"/analysis_*.md; do
    [ -f "$f" ] && cp "$f" "$REPORT/analysis/$name.$(basename "$f")"
  done
done <"$RUNS/logs/runs.tsv"
for d in split1 split2 cpu_scale_split1 fast/split1 fast/split2; do
  for f in comparison.md comparison.csv weights.md; do
    [ -f "$RUNS/$d/$f" ] && cp "$RUNS/$d/$f" "$REPORT/tables/${d//\//_}.$f"
  done
done
cp "$RUNS/logs/runs.tsv" "$RUNS/logs/preflight.txt" "$REPORT/"
for f in "$PLAN_JSON" "$BENCH_JSON" "${BENCH_JSON%.json}.md"; do
  [ -f "$f" ] && cp "$f" "$REPORT/"
done
nvidia-smi >"$REPORT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" >"$REPORT/nvidia-smi.txt"
export RUNS REPORT T S1 S2 SEEDS BUDGET_S PARALLEL TINY MPS_STARTED TEACHER_COMPILE \
  STAGE_COMPILE CONT_LR BCL_D FASSL CPU_EPOCHS DATA_ROOT="${DATA_ROOT:-}" \
  SPLITS="${SPLITS:-}" TINY_DATA="${TINY_DATA:-digits}"
"$PY" - "$@" <<'EOF' || echo "summary.md could not be written" >>"$REPORT/summary.md"
import json, os, statistics, subprocess, sys, time
from pathlib import Path

env, runs, report = os.environ, Path(os.environ["RUNS"]), Path(os.environ["REPORT"])
def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
gpu = sh(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
          "--format=csv,noheader"]) or "none found (nvidia-smi absent or failing)"
preflight = (runs / "logs/preflight.txt").read_text().strip()
plan_path = Path(env["PLAN_JSON"])
plan = json.loads(plan_path.read_text()) if plan_path.is_file() else {}
rows = [line.split("\t") for line in (runs / "logs/runs.tsv").read_text().splitlines()]
t, s1, s2 = (int(env[k]) for k in ("T", "S1", "S2"))
extra, bcl = s1 + s2, env["BCL_D"]
out = [f"# CIFAR-10-LT at the paper's width: {time.strftime('%F %H:%M UTC', time.gmtime())}", "",
       f"- GPU: {gpu}", f"- pre-flight: {preflight}; CPUs: {os.cpu_count()}",
       f"- command: scripts/reproduce_paper_width.sh {runs} {' '.join(sys.argv[1:])}",
       f"- TINY={env['TINY']} (1: width 4, 1-2 epochs: a check of the script, not a result)",
       f"- epochs: teacher {t}, stage 1 {s1}, stage 2 {s2}, SDCLR / BCL-D continued {extra} "
       f"(lr {env['CONT_LR']}), SimCLR/BYOL from scratch {t + extra}; CPU-scale "
       f"(teacher / stage 1 / stage 2): {' / '.join(env['CPU_EPOCHS'].split())}",
       f"- seeds of the arms: {env['SEEDS']}; teacher seed 0",
       "- data: scikit-learn digits, data.split = seed of the class ranking (TINY)"
       if env["TINY"] == "1" and env["TINY_DATA"] != "real" else
       f"- data: CIFAR-10 (JPEG copy) {env['DATA_ROOT']}, SDCLR's split 1 from {env['SPLITS']} "
       "(split 2 in the split2 rows)",
       f"- budget {env['BUDGET_S']} s; concurrent processes: {env['PARALLEL'] == '1'}; "
       f"MPS started by the script: {env.get('MPS_STARTED') == '1'}; train.compile teacher "
       f"{env['TEACHER_COMPILE']}, other runs {env['STAGE_COMPILE']}", "",
       "## Arms of split1: FASSL as the paper composes it", "",
       f"- `sdclr`: the SDCLR teacher, {t} epochs from scratch, seed 0",
       f"- `fassl_from_sdclr`: FASSL stages 1 + 2 ({s1} + {s2} epochs) on the teacher's export",
       "- `fassl_from_sdclr_phi1`: stage 2 with phi = 1 from the same stage 1",
       f"- `sdclr_continued`: the teacher's export trained {extra} more epochs at stage 2's "
       "lr (equal extra compute)"]
if bcl == "continued":
    out.append(f"- `bcl_d_continued`: BCL-D (the reference's defaults) from the teacher's "
               f"export for {extra} epochs at the same lr, against `sdclr_continued`")
elif bcl == "scratch":
    out.append(f"- `bcl_d`: BCL-D (the reference's defaults) from scratch for {t} epochs "
               "beside the teacher, against `sdclr`")
out += ["", "## Plan: the teacher's epochs sized from the bench", ""]
if plan:
    fmt = lambda x: "n/a" if x is None else f"{x:.1f}"  # noqa: E731
    bench = plan.get("bench", {})
    out += [f"- bench (SDCLR; {plan.get('epoch_images')} images an epoch): step "
            f"{fmt(bench.get('step_img_s'))} img/s, epoch {fmt(bench.get('recipe_epoch_img_s'))}"
            f" img/s; rate used {fmt(plan.get('rate_img_s'))} x safety {plan.get('safety')}",
            f"- epoch {fmt(plan.get('epoch_s'))} s; planned: arms after the teacher "
            f"{fmt(plan.get('tail_s'))} s, teacher {fmt(plan.get('teacher_s'))} s "
            f"(from {fmt(plan.get('elapsed_s'))} s elapsed) -> {plan.get('epochs')} epochs; "
            f"costs {plan.get('costs')}, start {plan.get('start_s')} s, probe "
            f"{plan.get('probe_s')} s",
            *(f"- note: {n}" for n in plan.get("notes", []))]
    if "stages" in plan:
        st = plan["stages"]
        out.append(f"- actual: teacher's export after {fmt(st.get('teacher_s'))} s (epoch "
                   f"{fmt(st.get('measured_epoch_s'))} s less START_S), "
                   f"{fmt(st.get('room_s'))} s left, stages {st['stage_epochs']}")
else:
    out.append("- no plan.json")
out += ["", "## Phases (seconds since the script started)", "",
        "| phase | first start | last end | wall clock | runs | exit codes |",
        "|---|---|---|---|---|---|"]
phases = {}
for phase, name, d, t0, t1, rc in rows:
    phases.setdefault(phase, []).append((int(t0), int(t1), rc))
for phase, items in phases.items():
    a, b = min(i[0] for i in items), max(i[1] for i in items)
    codes = " ".join(i[2] for i in items)
    out.append(f"| {phase} | {a} | {b} | {b - a} | {len(items)} | {codes} |")
out += ["", "## Runs", "", "| run | exit | wall s | stage: epochs done, median img/s |",
        "|---|---|---|---|"]
for phase, name, d, t0, t1, rc in rows:
    stages = []
    for m in sorted(Path(d).glob("**/metrics.jsonl")) if d != "-" else []:
        ep = [r for r in map(json.loads, m.read_text().splitlines()) if r.get("kind") == "epoch"]
        if ep:
            stage = "train" if m.parent == Path(d) else m.parent.name
            (report / "metrics" / f"{name}.{stage}.epochs.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in ep))
            rate = statistics.median(r["img_per_s"] for r in ep)
            stages.append(f"{stage}: {ep[-1]['epoch']}, {rate:.0f}")
    out.append(f"| {name} | {rc} | {int(t1) - int(t0)} | {'; '.join(stages)} |")
out += ["", "## Tables (`fassl tables`, computed from this machine's results.json files)", ""]
for f in sorted((report / "tables").glob("*.comparison.md")):
    out += [f"### {f.name.removesuffix('.comparison.md')}", "", f.read_text(), ""]
try:  # the tables pair fassl_from_sdclr and sdclr_continued; this pair is the script's own
    from fassl.compare import collect_runs
    from fassl.report.comparison import difference_tables
    for split in ("split1", "split2"):
        if (runs / split).is_dir():
            pairs = [("bcl_d_continued", "sdclr_continued")]
            text = difference_tables(collect_runs(runs / split), pairs)
            if text:
                out += [f"### {split}: BCL-D continued against SDCLR continued", "", text]
except Exception as err:  # noqa: BLE001 - the summary goes on without this table
    out.append(f"- (BCL-D continued - SDCLR continued not computed: {err})")
out += ["## Published reference", "",
        "The paper's CIFAR-10-LT rows (ResNet-18, SDCLR's probe), All / Rare / Medium / "
        "Frequent / Std; also the italic rows of the split tables above:", ""]
try:
    from fassl.report import PAPER_CIFAR10_LT
    for setting, methods in PAPER_CIFAR10_LT.items():
        for m, r in methods.items():
            cells = " / ".join(f"{r[c]:.2f}" for c in ("all", "rare", "medium", "frequent", "std"))
            out.append(f"- {setting}, {m}: {cells}")
except Exception as err:  # noqa: BLE001
    out.append(f"- (fassl.report not importable: {err})")
out += ["", "SDCLR's own paper, CIFAR-10-LT, 2,000 epochs, standard probe, mean over its five "
        "splits: Many / Medium / Few = 86.44 / 81.84 / 76.23."]
(report / "summary.md").write_text("\n".join(out) + "\n")
EOF

# What comes back is capped: drop the largest optional files until the pack fits.
mkdir -p "$PACK_TO"
PACK=$PACK_TO/paper_width_report.tar.gz
pack() { tar czf "$PACK" -C "$RUNS" report; }
pack
while [ "$(($(stat -c %s "$PACK") + $(stat -c %s "$REPORT/summary.md")))" -gt "$MAX_PACK_BYTES" ]; do
  big=$(find "$REPORT"/logs "$REPORT"/metrics "$REPORT"/analysis -type f -printf '%s %p\n' \
    | sort -nr | head -n 1 | cut -d' ' -f2-)
  [ -n "$big" ] || break
  echo "- dropped from the pack (over $MAX_PACK_BYTES bytes): ${big#"$REPORT"/}" \
    >>"$REPORT/summary.md"
  rm -f "$big"
  pack
done
cp "$REPORT/summary.md" "$PACK_TO/summary.md" 2>/dev/null
echo "== done in $(elapsed) s: $PACK ($(du -h "$PACK" | cut -f1))"
