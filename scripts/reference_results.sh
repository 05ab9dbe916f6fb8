#!/usr/bin/env bash
# Rebuilds the reference leaderboard in results.db from the shipped models.
#   bash scripts/reference_results.sh [LIMIT]     (LIMIT puzzles per split; default 1000)
# Resumable: re-running continues every run where it stopped (see docs/bench.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
limit=${1:-1000}
for n in 3 4; do
  [ -d "models/countdown$n-backtrack" ] || { echo "skip countdown$n: models/countdown$n-backtrack missing"; continue; }
  for split in test_new test_seen; do
    # the paper's temperature 0.7 throughout (countdown4-backtrack's own default, 1.0 from its
    # search_defaults.json, gets its own rows below)
    common=(--split "$split" --limit "$limit" --seed 0 --no-trace -q --temperature 0.7)
    if [ -d "models/countdown$n-sft" ]; then
      sbt bench "${common[@]}" --model "countdown$n-sft" --methods greedy,beam,best-of-n --n 8,16,32
      sbt bench "${common[@]}" --model "countdown$n-sft" --methods pass@n --n 32
    fi
    sbt bench "${common[@]}" --model "countdown$n-backtrack" --methods greedy,beam,self-backtrack --n 8,16,32 --b 0,1
    sbt bench "${common[@]}" --model "countdown$n-backtrack" --methods pass@n,dfs --n 32
  done
  [ "$n" = 4 ] && sbt bench --split test_new --limit "$limit" --seed 0 --no-trace -q --model countdown4-backtrack \
    --methods self-backtrack --n 32 --b 1 --temperature 1.0
  # the authors' Algorithm 1 (sqrt(N) states a round, visited states skipped, summed duplicate scores) beside ours
  if python -c "import llama_cpp" 2>/dev/null; then
    sbt bench --split test_new --limit "$limit" --seed 0 --no-trace -q --temperature 0.7 --model "countdown$n-backtrack" \
      --methods self-backtrack --n 8,32 --b 0,1,2 --param variant=all-states,authors --backend llama
  fi
done
# llama.cpp backend on the shipped GGUFs (parity of self-backtracking accuracy with torch)
if [ -f models/countdown4-backtrack/model-q8_0.gguf ] && python -c "import llama_cpp" 2>/dev/null; then
  for q in q8_0 q4_0; do
    SBT_LLAMA_QUANT=$q sbt bench --split test_new --limit "$limit" --seed 0 --no-trace -q --backend llama --temperature 0.7 \
      --model countdown4-backtrack --methods self-backtrack --n 32 --b 1
  done
  # temperature 1.0 (the better one on val for countdown4-backtrack) on q8_0
  t1=(--split test_new --limit "$limit" --seed 0 --no-trace -q --backend llama --model countdown4-backtrack --temperature 1.0)
  SBT_LLAMA_QUANT=q8_0 sbt bench "${t1[@]}" --methods self-backtrack --n 8,16,32 --b 1
  SBT_LLAMA_QUANT=q8_0 sbt bench "${t1[@]}" --methods pass@n --n 32
fi
# the paper's recipe alone (sbt train --recipe paper): every Table 1 row of the backtracking model
if [ -d models/countdown4-paper-backtrack ] && python -c "import llama_cpp" 2>/dev/null; then
  for split in test_new test_seen; do
    sbt bench --split "$split" --limit "$limit" --seed 0 --no-trace -q --temperature 0.7 --backend llama --workers 2 \
      --model countdown4-paper-backtrack --methods greedy,beam,self-backtrack --n 8,32 --b 0,1
  done
  # b x N on the shipped Countdown-4 model (docs/experiments.md section 5; 500 puzzles)
  sbt bench --split test_new --limit 500 --seed 0 --no-trace -q --temperature 0.7 --backend llama --workers 2 \
    --model countdown4-backtrack --methods self-backtrack --n 4,8,16,32,64,128 --b 0,1,2,3
  # puzzles people type, with sbt solve's default search (docs/experiments.md)
  sbt bench --puzzles data/countdown4/game24.jsonl --model countdown4-backtrack --methods self-backtrack --n 16 --b 1 \
    --backend llama --no-trace --seed 0 -q --workers 2
  sbt bench --puzzles data/countdown3/small12.jsonl --model countdown3-backtrack --methods self-backtrack --n 16 --b 1 \
    --backend llama --no-trace --seed 0 -q --workers 2
fi
# expert iteration: 3 rounds from the shipped Countdown-3 backtracking model (one experiment
# per weights: the results.db rows of "countdown3-backtrack-iterate" are from the stage-1 weights)
sha=$(python -c "from sbt_core.models import model_sha256, resolve_model; print(model_sha256(resolve_model('countdown3-backtrack'))[:8])")
sbt iterate --model countdown3-backtrack --rounds 3 --eval-limit "$limit" --experiment "countdown3-backtrack@$sha-iterate" -q
sbt bench report --all-weights --format markdown --out docs/leaderboard.md  # every checkpoint's curves
# the README's plot: test_new only, the shipped weights (both splits make twice the curves)
sbt bench report --split test_new --plot docs/scaling.png --plot docs/scaling.svg --format json --out /dev/null
# equal compute (docs/experiments.md section 3)
sbt bench report --split test_new --compute-plot docs/figures/compute.png --format json --out /dev/null
