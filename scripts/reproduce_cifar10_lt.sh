#!/usr/bin/env bash
# The CIFAR-10-LT experiments of docs/RESULTS.md with the CPU-scale recipe
# (configs/cifar10_lt_cpu.yaml), in order of priority:
#   1. one SDCLR teacher; FASSL and its phi = 1 ablation from it, seeds 0, 1, 2
#   2. SimCLR, BYOL, SwAV, SDCLR at FASSL's compute, seeds 0, 1, beside FASSL
#   3. a longer SDCLR teacher, then stage 1: weight enrichment with a stronger teacher
# Every run resumes where it stopped when the script is started again.
#
#   scripts/reproduce_cifar10_lt.sh [OUT_DIR] [key=value ...]
#
# BUDGET_S: stop after this many seconds (phases that do not fit are cut off; what they
# finished stays). FASSL: the command to run (default: fassl).
set -u
OUT=${1:-runs/cifar10_lt}
shift || true
EXTRA=("$@")
FASSL=${FASSL:-fassl}
BUDGET_S=${BUDGET_S:-0}
START=$(date +%s)

phase() {  # phase NAME COMMAND...: run with what is left of the budget
  local name=$1
  shift
  local limit=""
  if [ "$BUDGET_S" -gt 0 ]; then
    local left=$((BUDGET_S - ($(date +%s) - START)))
    if [ "$left" -le 10 ]; then
      echo "== $name: skipped, budget spent"
      return 1
    fi
    limit="timeout $left"
  fi
  echo "== $name ($(($(date +%s) - START)) s elapsed)"
  $limit "$@"
}

R=(cifar10_lt_cpu "${EXTRA[@]}")
phase "SDCLR teacher" $FASSL pretrain "${R[@]}" method=sdclr out_dir="$OUT/teacher" &&
  phase "FASSL vs phi=1, 3 seeds" $FASSL compare "${R[@]}" out_dir="$OUT/compare" \
    "compare.methods=[fassl,fassl_phi1]" "compare.seeds=[0,1,2]" \
    pipeline.teacher_checkpoint="$OUT/teacher/encoder.safetensors" &&
  cp "$OUT/compare/comparison.md" "$OUT/fassl_vs_phi1.md" &&
  cp "$OUT/compare/comparison.csv" "$OUT/fassl_vs_phi1.csv"
phase "baselines at equal compute, 2 seeds" $FASSL compare "${R[@]}" out_dir="$OUT/compare" \
  "compare.methods=[simclr,byol,swav,sdclr,fassl,fassl_phi1]" "compare.seeds=[0,1]" \
  pipeline.teacher_checkpoint="$OUT/teacher/encoder.safetensors"
phase "longer SDCLR teacher" $FASSL pretrain "${R[@]}" method=sdclr optim.epochs=150 \
  optim.warmup_epochs=5 out_dir="$OUT/teacher_long" &&
  phase "stage 1 on the longer teacher" $FASSL pretrain "${R[@]}" method=fassl_prototypes \
    optim.epochs=10 optim.lr=0.05 optim.warmup_epochs=1 \
    train.init_from="$OUT/teacher_long/encoder.safetensors" out_dir="$OUT/prototypes_long"
echo "== done in $(($(date +%s) - START)) s"
