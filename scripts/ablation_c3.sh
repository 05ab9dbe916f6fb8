#!/usr/bin/env bash
# Issue 23's ablations on Countdown-3, where training is cheap: the error kinds of D_back
# (exploration:computational:rule) and the D_back ratio, each a small model trained from
# scratch with the same seed, data and token budget, otherwise the paper's data (no
# goal-forcing, no honest-last, no weight average), then benched on 1,000 test_new puzzles
# (greedy; self-backtracking N=16, b=0 and 1; T=0.7; torch).
#   bash scripts/ablation_c3.sh [TOKENS]     (default 16e6 tokens per model, the Countdown-3
#                                             small model's 16M-token schedule of docs/learning_curves.md:
#                                             about 20-30 minutes each on one Xeon thread, 8 models;
#                                             at 6e6 the models are still at 0% val greedy)
# Resumable: a finished model is skipped, an unfinished one continues from its checkpoint,
# and the benches resume in results.db. Table: docs/experiments.md, section "Ablations".
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
tokens=${1:-16e6}
[ -f data/countdown3/train.jsonl ] || sbt data generate --numbers 3 --train 200000 --seed 0 --out data/countdown3/ --overwrite  # (as shipped: val/test and meta.json come back byte for byte)

run() {  # NAME, then the sbt train options that make this model different
  local name=$1
  shift
  local out="runs/ablation-c3-${tokens}/$name"
  local common=(--numbers 3 --tokens "$tokens" --goal-forcing 0 --honest-last 0 --ema 0 --threads 1 --seed 0 --quiet)
  if [ ! -f "$out/training.json" ]; then
    if [ -f "$out/checkpoint/state.json" ]; then
      sbt train "${common[@]}" "$@" --out "$out" --resume
    else
      sbt train "${common[@]}" "$@" --out "$out"
    fi
  fi
  sbt bench --split test_new --limit 1000 --seed 0 --no-trace -q --temperature 0.7 --numbers 3 \
    --model "$out" --methods greedy,self-backtrack --n 16 --b 0,1
}

# error kinds at D_back ratio 1 (the paper's 1:2:2 first)
run kinds-1-2-2 --kinds 1:2:2
run kinds-1-1-1 --kinds 1:1:1
run kinds-1-0-0 --kinds 1:0:0
run kinds-0-1-0 --kinds 0:1:0
run kinds-0-0-1 --kinds 0:0:1
# D_back ratio at kinds 1:2:2 (the paper: 1:0.5 about as good as 1:1, 1:2 slightly worse)
run ratio-0.5 --kinds 1:2:2 --back-ratio 0.5
run ratio-2 --kinds 1:2:2 --back-ratio 2
# no D_back at all (the SFT twin at the same budget)
run sft --data op
