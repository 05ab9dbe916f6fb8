#!/usr/bin/env bash
# Issue 25: self-backtracking against DPO, KTO and GRPO on the same Countdown-4 models.
#   bash scripts/objectives.sh [train|bench|all]   (default all; resumable: a finished model
#                                                   is skipped, a run continues from its
#                                                   checkpoint, the benches resume in results.db)
# Every model starts from the shipped countdown4-sft (or countdown4-backtrack for the
# GRPO-on-self-backtracking run); the preference data is the SFT model's own samples of
# 10,000 train puzzles (16 at T=0.7), labelled by the strict verifier. Table and reading:
# docs/objectives.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
what=${1:-all}
workers=${WORKERS:-2}
prefs=runs/prefs/c4-sft-n16.jsonl
common=(--numbers 4 --threads 1 --quiet)

train() {  # OUT, then the sbt train options of this model
  local out=$1
  shift
  [ -f "$out/training.json" ] && return 0
  if [ -f "$out/checkpoint/state.json" ]; then
    sbt train "${common[@]}" "$@" --out "$out" --resume
  else
    sbt train "${common[@]}" "$@" --out "$out"
  fi
}

if [ "$what" != bench ]; then
  mkdir -p runs/prefs
  sbt harvest --model countdown4-sft --numbers 4 --puzzles 10000 --n 16 --labelled 4 --backend llama \
    --workers "$workers" --out "$prefs" -q
  train runs/c4-sft-dpo --objective dpo --base-model models/countdown4-sft --prefs "$prefs" --epochs 2 --lr 1e-4
  train runs/c4-sft-kto --objective kto --base-model models/countdown4-sft --prefs "$prefs" --epochs 2 --lr 1e-4
  train runs/c4-sft-grpo --objective grpo --base-model models/countdown4-sft --train-puzzles 4096 --group 8 \
    --lr 1e-4 --eval-every 32 --eval-puzzles 300
  train runs/c4-backtrack-grpo --objective grpo --base-model models/countdown4-backtrack --train-puzzles 4096 \
    --group 8 --lr 1e-4 --eval-every 32 --eval-puzzles 300
fi

if [ "$what" != train ]; then
  for split in test_new test_seen; do
    b=(--split "$split" --limit 1000 --seed 0 --no-trace -q --temperature 0.7 --backend llama --workers "$workers")
    for m in models/countdown4-sft runs/c4-sft-dpo runs/c4-sft-kto runs/c4-sft-grpo; do
      [ -f "$m/training.json" ] || continue
      [ -f "$m/model-q8_0.gguf" ] || sbt export gguf "$m" -q q8_0
      sbt bench "${b[@]}" --model "$m" --methods greedy,best-of-n --n 8,16,32
    done
    for m in models/countdown4-backtrack runs/c4-backtrack-grpo; do
      [ -f "$m/training.json" ] || continue
      [ -f "$m/model-q8_0.gguf" ] || sbt export gguf "$m" -q q8_0
      sbt bench "${b[@]}" --model "$m" --methods greedy,best-of-n,self-backtrack --n 8,16,32 --b 1
    done
  done
fi
