#!/usr/bin/env bash
# The CIFAR-10-LT experiments of docs/RESULTS.md with the CPU-scale recipe
# (configs/cifar10_lt_cpu.yaml), in order of priority:
#   1. one SDCLR teacher (25 epochs); from it, for seeds 0, 1, 2, stage 1 and three
#      stage-2 arms from the same stage-1 checkpoint: FASSL with the configured weight,
#      the phi = 1 ablation, and Eq. 3 as written          -> OUT/compare
#   2. SimCLR, BYOL, SwAV, SDCLR at FASSL's compute (45 epochs), seeds 0, 1
#                                                           -> OUT/compare
#   3. a longer SDCLR teacher (150 epochs), then the same three arms with stages of
#      10 and 50 epochs, seeds 0, 1, 2                      -> OUT/long
# Every run resumes where it stopped when the script is started again.
#
#   scripts/reproduce_cifar10_lt.sh [OUT_DIR] [key=value ...]
#
# PARALLEL=1: run the independent trainings as concurrent processes, each logging to
#   OUT/logs/. For a GPU that one small run leaves mostly idle; start the CUDA MPS
#   daemon first (nvidia-cuda-mps-control -d) so that their kernels share the GPU.
# RECIPE: the recipe to run (default: cifar10_lt_cpu).
# LONG_EPOCHS: phase 3's teacher, stage 1 and stage 2 epochs (default: "150 10 50").
# BUDGET_S: stop after this many seconds (what finished stays).
# FASSL: the command to run (default: fassl).
set -u
OUT=${1:-runs/cifar10_lt}
shift || true
EXTRA=("$@")
FASSL=${FASSL:-fassl}
BUDGET_S=${BUDGET_S:-0}
PARALLEL=${PARALLEL:-0}
START=$(date +%s)
mkdir -p "$OUT/logs"
R=("${RECIPE:-cifar10_lt_cpu}" "${EXTRA[@]}")

run() {  # run NAME COMMAND...: in the background with PARALLEL=1, else now
  local name=$1
  shift
  local limit=()
  if [ "$BUDGET_S" -gt 0 ]; then
    local left=$((BUDGET_S - ($(date +%s) - START)))
    if [ "$left" -le 10 ]; then
      echo "== $name: skipped, budget spent"
      return 1
    fi
    limit=(timeout "$left")
  fi
  echo "== $name ($(($(date +%s) - START)) s elapsed)"
  if [ "$PARALLEL" = 1 ]; then
    "${limit[@]}" "$@" >"$OUT/logs/$name.log" 2>&1 &
  else
    "${limit[@]}" "$@"
  fi
}

wait_for() {  # wait_for FILE: true once it exists; false if no running job can make it
  while [ ! -f "$1" ] && [ -n "$(jobs -r)" ]; do sleep 2; done
  [ -f "$1" ]
}

fassl_arms() {  # fassl_arms DIR TEACHER_EXPORT [key=value ...]: three arms, seeds 0-2
  local dir=$1 teacher=$2
  shift 2
  local c=(out_dir="$dir" pipeline.teacher_checkpoint="$teacher" "$@")
  local s m p
  for s in 0 1 2; do
    run "$(basename "$dir")_fassl_seed$s" $FASSL compare "${R[@]}" "${c[@]}" \
      "compare.methods=[fassl]" "compare.seeds=[$s]"
  done
  for s in 0 1 2; do  # the other arms start from FASSL's stage-1 checkpoint
    p=$dir/fassl/seed$s/prototypes/encoder.safetensors
    wait_for "$p" || continue
    for m in fassl_phi1 fassl_paper; do
      run "$(basename "$dir")_${m}_seed$s" $FASSL compare "${R[@]}" "${c[@]}" \
        "compare.methods=[$m]" "compare.seeds=[$s]" pipeline.prototypes_checkpoint="$p"
    done
  done
}

baselines() {
  local m
  for m in simclr byol swav sdclr; do
    run "$m" $FASSL compare "${R[@]}" out_dir="$OUT/compare" "compare.methods=[$m]" \
      "compare.seeds=[0,1]"
  done
}

read -r LONG_T LONG_P LONG_R <<<"${LONG_EPOCHS:-150 10 50}"
TEACHER=$OUT/teacher/encoder.safetensors
LONG=$OUT/teacher_long/encoder.safetensors
long_teacher() {
  run teacher_long $FASSL pretrain "${R[@]}" method=sdclr optim.epochs="$LONG_T" \
    optim.warmup_epochs=5 out_dir="$OUT/teacher_long"
}
LONG_STAGES=(pipeline.prototypes.epochs="$LONG_P" pipeline.rebalance.epochs="$LONG_R")

if [ "$PARALLEL" = 1 ]; then  # the longest chains first
  long_teacher
  run teacher $FASSL pretrain "${R[@]}" method=sdclr out_dir="$OUT/teacher"
  baselines
  wait_for "$TEACHER" && fassl_arms "$OUT/compare" "$TEACHER"
  wait_for "$LONG" && fassl_arms "$OUT/long" "$LONG" "${LONG_STAGES[@]}"
  wait
else
  run teacher $FASSL pretrain "${R[@]}" method=sdclr out_dir="$OUT/teacher" &&
    fassl_arms "$OUT/compare" "$TEACHER"
  baselines
  long_teacher && fassl_arms "$OUT/long" "$LONG" "${LONG_STAGES[@]}"
fi
[ -d "$OUT/compare" ] && $FASSL tables "$OUT/compare" --paper
[ -d "$OUT/long" ] && $FASSL tables "$OUT/long"
echo "== done in $(($(date +%s) - START)) s"
