#!/usr/bin/env bash
# Rebuilds the reference leaderboard in results.db from the shipped models.
#   bash benchmarks/reference_results.sh [LIMIT]     (LIMIT puzzles per split; default 1000)
# Resumable: re-running continues every run where it stopped (see docs/bench.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
limit=${1:-1000}
for n in 3 4; do
  [ -d "models/countdown$n-backtrack" ] || { echo "skip countdown$n: models/countdown$n-backtrack missing"; continue; }
  for split in test_new test_seen; do
    common=(--split "$split" --limit "$limit" --seed 0 --no-trace -q)
    if [ -d "models/countdown$n-sft" ]; then
      sbt bench "${common[@]}" --model "countdown$n-sft" --methods greedy,beam,best-of-n --n 8,16,32
      sbt bench "${common[@]}" --model "countdown$n-sft" --methods pass@n --n 32
    fi
    sbt bench "${common[@]}" --model "countdown$n-backtrack" --methods greedy,self-backtrack --n 8,16,32 --b 0,1
    sbt bench "${common[@]}" --model "countdown$n-backtrack" --methods pass@n,dfs --n 32
  done
done
sbt bench report --plot docs/scaling.png --plot docs/scaling.svg --format markdown --out docs/leaderboard.md
