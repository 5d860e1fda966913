#!/usr/bin/env bash
# CIFAR-10-LT at the paper's width (configs/cifar10_lt_paper_width.yaml: ResNet-18 width
# 64, batch 512, bf16) on SDCLR's published split 1, for one GPU and one command of at
# most 10 minutes. In order of priority:
#   1. one SDCLR teacher, TEACHER_EPOCHS                 -> RUNS/split1/sdclr_teacher/seed0
#   2. from it, for every seed of SEEDS, as concurrent processes: stage 1 (STAGE1_EPOCHS),
#      then three stage-2 arms (STAGE2_EPOCHS) from that one stage-1 checkpoint: fassl
#      (knn weight, strength 0.5), fassl_paper (Eq. 3 as written), fassl_phi1 (phi = 1);
#      and SDCLR continued from the teacher for STAGE1 + STAGE2 epochs at stage 2's lr
#      (equal compute). Every encoder gets SDCLR's augmented probe, standard and
#      few-shot (the recipe's probe.variant=sdclr)                        -> RUNS/split1
#   3. the fast probe (features extracted once) of the same encoders -> RUNS/fast/split1
#   4. the CPU-scale comparison (cifar10_lt_cpu: width 32, 25-epoch teacher, stages of
#      5 and 15 epochs, fast probe) on split 1, the same arms and seeds
#                                                               -> RUNS/cpu_scale_split1
#   5. SimCLR and BYOL from scratch for TEACHER + STAGE1 + STAGE2 epochs, seed 0, when
#      the teacher's wall clock says they fit in what is left          -> RUNS/split1
#   6. split 2: phases 1-3 again, when the wall clock of 1-2 says they fit -> RUNS/split2
#   7. the field's label-free re-balancers on split 1, seed 0, when they fit: BCL-I with
#      the common augmentations (the paper's row), BCL-D, SimCLR with the cosine
#      temperature schedule (each from scratch for TEACHER + STAGE1 + STAGE2 epochs, as
#      phase 5's baselines), and LDAM-DRW+SSP (LDAM-DRW from the split's SDCLR teacher
#      for STAGE1 + STAGE2 epochs)                                         -> RUNS/split1
# then `fassl tables` of each folder and a report of small files in RUNS/report/
# (results.json of each run renamed by run, tables, log tails, per-epoch throughput,
# summary.md with the GPU, the epochs, seeds, split and wall clock of every phase),
# packed into PACK_TO/paper_width_report.tar.gz with a copy of summary.md beside it.
# Checkpoints stay in RUNS. Every run resumes where it stopped when the script is
# started again with the same RUNS.
#
#   DATA_ROOT=/path/to/cifar10-jpeg.tar.gz SPLITS=/path/to/sdclr-splits/cifar10 \
#     scripts/reproduce_paper_width.sh [RUNS] [key=value ...]
#
# DATA_ROOT: the CIFAR-10 JPEG copy, its .tar.gz or the extracted folder (required).
# SPLITS: SDCLR's index files for CIFAR-10 (sdclr-splits/cifar10; required).
# TEACHER_EPOCHS (500), STAGE1_EPOCHS (5), STAGE2_EPOCHS (20): the stages are this
#   project's choice (the paper gives none), sized to follow the teacher in one command.
# SEEDS ("0 1"): seeds of the stage-2 arms and of SDCLR continued.
# BUDGET_S (540; 0 = none): runs are stopped at BUDGET_S - RESERVE_S (40) seconds, the
#   rest is left for the tables and the report. A run that would start with less than
#   MIN_RUN_S (20) seconds left is skipped; what finished stays.
# PARALLEL (1): independent runs as concurrent processes. MPS (auto): start the CUDA MPS
#   daemon (nvidia-cuda-mps-control -d) so that their kernels share the GPU, and stop it
#   at the end if this script started it.
# TEACHER_COMPILE (auto) / STAGE_COMPILE (eager): train.compile of the teachers and of
#   the short runs (compilation of many concurrent processes costs more than it saves).
# CONT_LR (0.05), CONT_WARMUP (2): SDCLR continued's lr and warm-up (stage 2's).
# CPU_EPOCHS ("25 5 15"): teacher, stage 1 and stage 2 epochs of phase 4.
# SPLIT2 (1): try phase 6. PACK_TO: where the tar.gz goes (default $OUT if set, else RUNS).
# FASSL: the command (default: fassl on PATH, else PY -m fassl with src/ on PYTHONPATH;
#   PY: .venv/bin/python if there is one, else python3). Run from the repository root.
# WHEELS: a folder of wheels (e.g. omegaconf) installed into /tmp/fassl-site first, for a
#   machine that has torch but not every dependency.
# TINY=1: width 4, 1-2 epochs, scikit-learn's digits, no budget: the whole script in
#   minutes on a CPU, to check it end to end. TINY_DATA=real keeps DATA_ROOT/SPLITS.
set -u
RUNS=${1:-runs/paper_width}
shift || true
EXTRA=("$@")
TINY=${TINY:-0}
die() { echo "reproduce_paper_width: error: $*" >&2; exit 2; }

if [ "$TINY" = 1 ]; then
  T=${TEACHER_EPOCHS:-2} S1=${STAGE1_EPOCHS:-1} S2=${STAGE2_EPOCHS:-1}
  BUDGET_S=${BUDGET_S:-0} CONT_WARMUP=${CONT_WARMUP:-0} CPU_EPOCHS=${CPU_EPOCHS:-$T $S1 $S2}
else
  T=${TEACHER_EPOCHS:-500} S1=${STAGE1_EPOCHS:-5} S2=${STAGE2_EPOCHS:-20}
  BUDGET_S=${BUDGET_S:-540} CONT_WARMUP=${CONT_WARMUP:-2} CPU_EPOCHS=${CPU_EPOCHS:-25 5 15}
fi
SEEDS=${SEEDS:-0 1}
RESERVE_S=${RESERVE_S:-40}
MIN_RUN_S=${MIN_RUN_S:-20}
PARALLEL=${PARALLEL:-1}
MPS=${MPS:-auto}
TEACHER_COMPILE=${TEACHER_COMPILE:-auto}
STAGE_COMPILE=${STAGE_COMPILE:-eager}
CONT_LR=${CONT_LR:-0.05}
SPLIT2=${SPLIT2:-1}
PACK_TO=${PACK_TO:-${OUT:-$RUNS}}
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

find_fassl() {  # the fassl command, its dependencies checked
  if [ -n "${WHEELS:-}" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/fassl-site \
      "$WHEELS"/*.whl || die "WHEELS=$WHEELS: could not install its wheels"
    export PYTHONPATH=/tmp/fassl-site${PYTHONPATH:+:$PYTHONPATH}
  fi
  if [ -z "${FASSL:-}" ]; then
    if command -v fassl >/dev/null; then
      FASSL=fassl
    else
      FASSL="$PY -m fassl"
      export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
    fi
  fi
  $FASSL --help >/dev/null 2>"$RUNS/logs/fassl_check.log" || die "'$FASSL' does not run" \
    "($(tail -n 1 "$RUNS/logs/fassl_check.log")); set FASSL, or WHEELS for missing packages"
}

check_inputs
mkdir -p "$RUNS/logs" || die "cannot create $RUNS/logs"
find_fassl
: >"$RUNS/logs/runs.tsv"

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
COMMON=("${DATA_ARGS[@]}" train.progress=false "${TINY_ARGS[@]}" "${EXTRA[@]}")

elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((BUDGET_S - $(elapsed) - RESERVE_S)); }
note() {  # note PHASE NAME DIR RC: a row of runs.tsv without a run
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(elapsed)" "$(elapsed)" "$4" \
    >>"$RUNS/logs/runs.tsv"
}

run() {  # run NAME DIR COMMAND...: logged, timed, limited by the budget; in the
  # background with PARALLEL=1. Its row in runs.tsv: phase name dir start end rc.
  local name=$1 dir=$2
  shift 2
  if [ -f "$dir/results.json" ]; then  # finished by an earlier start of this script
    note "$PHASE" "$name" "$dir" done_before
    return 0
  fi
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
  if [ "$PARALLEL" = 1 ]; then _job "$@" & else _job "$@"; fi
}

wait_for() {  # wait_for FILE: true once it exists; false if no running job can make it
  while [ ! -f "$1" ] && [ -n "$(jobs -r)" ]; do sleep 2; done
  [ -f "$1" ]
}

# The experiment's recipe and overrides (A), folder (D), tag and lengths (ET ES1 ES2),
# set by use_experiment before the phase functions below run.
use_experiment() {  # use_experiment TAG DIR RECIPE SPLIT TEACHER STAGE1 STAGE2
  TAG=$1 D=$RUNS/$2 ET=$5 ES1=$6 ES2=$7
  A=("$3" "data.split=$4" "${COMMON[@]}" "pipeline.prototypes.epochs=$ES1"
    "pipeline.rebalance.epochs=$ES2")
  TEACHER=$D/sdclr_teacher/seed0/encoder.safetensors
}

teacher() {
  run "${TAG}_sdclr_teacher" "$D/sdclr_teacher/seed0" $FASSL pretrain "${A[@]}" \
    method=sdclr seed=0 "optim.epochs=$ET" "train.compile=$TEACHER_COMPILE" \
    "out_dir=$D/sdclr_teacher/seed0"
}

arms() {  # stage 1 + fassl and SDCLR continued; then fassl_phi1, fassl_paper
  local s m p c=("${A[@]}" "out_dir=$D" "pipeline.teacher_checkpoint=$TEACHER"
    "train.compile=$STAGE_COMPILE")
  for s in $SEEDS; do
    run "${TAG}_fassl_seed$s" "$D/fassl/seed$s" $FASSL compare "${c[@]}" \
      "compare.methods=[fassl]" "compare.seeds=[$s]"
    run "${TAG}_sdclr_continued_seed$s" "$D/sdclr_continued/seed$s" $FASSL pretrain \
      "${A[@]}" method=sdclr "seed=$s" "train.init_from=$TEACHER" \
      "optim.epochs=$((ES1 + ES2))" "optim.lr=$CONT_LR" "optim.warmup_epochs=$CONT_WARMUP" \
      "train.compile=$STAGE_COMPILE" "out_dir=$D/sdclr_continued/seed$s"
  done
  for s in $SEEDS; do  # the other arms start from fassl's stage-1 checkpoint
    p=$D/fassl/seed$s/prototypes/encoder.safetensors
    wait_for "$p" || continue
    for m in fassl_phi1 fassl_paper; do
      run "${TAG}_${m}_seed$s" "$D/$m/seed$s" $FASSL compare "${c[@]}" \
        "compare.methods=[$m]" "compare.seeds=[$s]" "pipeline.prototypes_checkpoint=$p"
    done
  done
}

encoders() {  # "method seed export" of every encoder of the experiment
  local s m
  echo "sdclr_teacher 0 $TEACHER"
  for s in $SEEDS; do
    for m in fassl fassl_phi1 fassl_paper; do
      echo "$m $s $D/$m/seed$s/rebalance/encoder.safetensors"
    done
    echo "sdclr_continued $s $D/sdclr_continued/seed$s/encoder.safetensors"
  done
}

fast_probes() {  # the fast probe of each encoder, as soon as it exists
  local m s e out fast=$RUNS/fast/$(basename "$D")
  while read -r m s e; do
    wait_for "$e" || continue
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

rebalancers() {  # phase 7: BCL-I (common), BCL-D, SimCLR + temperature schedule; LDAM+SSP
  local n=$((ET + ES1 + ES2)) m
  for m in bcl_i_common bcl_d simclr_ts; do
    run "${TAG}_${m}_seed0" "$D/$m/seed0" $FASSL compare "${A[@]}" "out_dir=$D" \
      "compare.methods=[$m]" "compare.seeds=[0]" "compare.baseline_epochs=$n" \
      "train.compile=$TEACHER_COMPILE"
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

remember() {  # remember NAME: seconds elapsed now, or as first recorded by an earlier
  # start of this script (a resumed start finds its runs done in no time)
  local f=$RUNS/logs/$1.seconds
  [ -f "$f" ] || elapsed >"$f"
  cat "$f"
}

main_experiment() {  # phases 1-3 of split $1 with the paper-width recipe
  use_experiment "split$1" "split$1" cifar10_lt_paper_width "$1" "$T" "$S1" "$S2"
  PHASE=teacher_split$1
  teacher
  wait_for "$TEACHER" || return 1
  TEACHER_S=$(remember "teacher_split$1")
  PHASE=arms_split$1
  arms
  PHASE=fast_probes_split$1
  fast_probes
  return 0
}

start_mps() {
  MPS_STARTED=0
  [ "$PARALLEL" = 1 ] && [ "$MPS" != 0 ] && [ "$TINY" != 1 ] || return 0
  command -v nvidia-cuda-mps-control >/dev/null || return 0
  if nvidia-cuda-mps-control -d; then MPS_STARTED=1; fi
}

start_mps
main_experiment 1 && ARMS_S=$(remember arms_split1)  # all split-1 encoders exported
PHASE=cpu_scale_split1
read -r CPU_T CPU_S1 CPU_S2 <<<"$CPU_EPOCHS"
use_experiment cpu1 cpu_scale_split1 cifar10_lt_cpu 1 "$CPU_T" "$CPU_S1" "$CPU_S2"
teacher && wait_for "$TEACHER" && arms
PHASE=scratch_split1
use_experiment split1 split1 cifar10_lt_paper_width 1 "$T" "$S1" "$S2"
fits "$PHASE" $((${TEACHER_S:-999999} * (T + S1 + S2) / T)) && scratch
if [ "$SPLIT2" = 1 ] && fits split2 "${ARMS_S:-999999}"; then main_experiment 2; fi
PHASE=rebalancers_split1
use_experiment split1 split1 cifar10_lt_paper_width 1 "$T" "$S1" "$S2"
fits "$PHASE" $((${TEACHER_S:-999999} * 3 * (T + S1 + S2) / T)) && wait_for "$TEACHER" \
  && rebalancers
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
cp "$RUNS/logs/runs.tsv" "$REPORT/runs.tsv"
nvidia-smi >"$REPORT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" >"$REPORT/nvidia-smi.txt"
export RUNS REPORT T S1 S2 SEEDS BUDGET_S PARALLEL TINY MPS_STARTED TEACHER_COMPILE \
  STAGE_COMPILE CONT_LR FASSL CPU_EPOCHS DATA_ROOT="${DATA_ROOT:-}" SPLITS="${SPLITS:-}" \
  TINY_DATA="${TINY_DATA:-digits}"
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
torch = sh([sys.executable, "-c", "import torch; print(torch.__version__, "
            "torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"])
rows = [line.split("\t") for line in (runs / "logs/runs.tsv").read_text().splitlines()]
t, s1, s2 = (int(env[k]) for k in ("T", "S1", "S2"))
out = [f"# CIFAR-10-LT at the paper's width: {time.strftime('%F %H:%M UTC', time.gmtime())}", "",
       f"- GPU: {gpu}", f"- torch: {torch or 'not importable by python3'}; CPUs: {os.cpu_count()}",
       f"- command: scripts/reproduce_paper_width.sh {runs} {' '.join(sys.argv[1:])}",
       f"- TINY={env['TINY']} (1: width 4, 1-2 epochs: a check of the script, not a result)",
       f"- epochs: teacher {t}, stage 1 {s1}, stage 2 {s2}, SDCLR continued {s1 + s2} "
       f"(lr {env['CONT_LR']}), SimCLR/BYOL from scratch {t + s1 + s2}; CPU-scale "
       f"(teacher / stage 1 / stage 2): {' / '.join(env['CPU_EPOCHS'].split())}",
       f"- seeds of the stage-2 arms: {env['SEEDS']}; teacher seed 0",
       "- data: scikit-learn digits, data.split = seed of the class ranking (TINY)"
       if env["TINY"] == "1" and env["TINY_DATA"] != "real" else
       f"- data: CIFAR-10 (JPEG copy) {env['DATA_ROOT']}, SDCLR's split 1 from {env['SPLITS']} "
       "(split 2 in the split2 rows)",
       f"- budget {env['BUDGET_S']} s; concurrent processes: {env['PARALLEL'] == '1'}; "
       f"MPS started by the script: {env.get('MPS_STARTED') == '1'}; train.compile teacher "
       f"{env['TEACHER_COMPILE']}, short runs {env['STAGE_COMPILE']}", "",
       "## Phases (seconds since the script started)", "",
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
out += ["## Published reference", "",
        "The paper's CIFAR-10-LT rows (ResNet-18, SDCLR's probe), All / Rare / Medium / "
        "Frequent / Std; also the italic rows of the split tables above:", ""]
try:
    from fassl.report import PAPER_CIFAR10_LT
    for setting, methods in PAPER_CIFAR10_LT.items():
        for m, r in methods.items():
            cells = " / ".join(f"{r[c]:.2f}" for c in ("all", "rare", "medium", "frequent", "std"))
            out.append(f"- {setting}, {m}: {cells}")
except ImportError as err:
    out.append(f"- (fassl.report not importable: {err})")
out += ["", "SDCLR's own paper, CIFAR-10-LT, 2,000 epochs, standard probe, mean over its five "
        "splits: Many / Medium / Few = 86.44 / 81.84 / 76.23."]
(report / "summary.md").write_text("\n".join(out) + "\n")
EOF
mkdir -p "$PACK_TO"
tar czf "$PACK_TO/paper_width_report.tar.gz" -C "$RUNS" report
cp "$REPORT/summary.md" "$PACK_TO/summary.md" 2>/dev/null
echo "== done in $(elapsed) s: $PACK_TO/paper_width_report.tar.gz ($(du -h \
  "$PACK_TO/paper_width_report.tar.gz" | cut -f1))"
