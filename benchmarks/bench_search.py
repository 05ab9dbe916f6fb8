"""Accuracy and cost of every search method on a JSONL split, plus `sbt solve` wall time.

    python benchmarks/bench_search.py --split data/countdown4/test_new.jsonl --limit 1000 \\
        --model countdown4-backtrack --sft-model countdown4-sft
    python benchmarks/bench_search.py --split data/countdown3/test_new.jsonl --limit 200 \\
        --model countdown3-backtrack --run "self-backtrack:n=16,b=1" --run "greedy:"
    python benchmarks/bench_search.py --solve-timing 5 --split ...   # end-to-end `sbt solve`

Default grid (issue 4): on the SFT model (if given) greedy, beam (width 4) and Best-of-N
(N = 8, 16, 32); on the backtracking model greedy, self-backtracking (b = 0, 1;
N = 8, 16, 32), pass@N (N = 32, oracle) and DFS (32 nodes, oracle). Prints one row per
(model, method, params): accuracy with its standard error, and per puzzle the mean
generated tokens, model calls, backtracks and wall time. Everything is seeded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from sbt_core.backends import load_backend  # noqa: E402
from sbt_core.generate import read_puzzles  # noqa: E402
from sbt_core.search import METHODS, run_search  # noqa: E402

SFT_GRID = ["greedy:", "beam:width=4", "best-of-n:n=8", "best-of-n:n=16", "best-of-n:n=32"]
BACKTRACK_GRID = ["greedy:", "self-backtrack:n=8,b=0", "self-backtrack:n=16,b=0", "self-backtrack:n=32,b=0",
                  "self-backtrack:n=8,b=1", "self-backtrack:n=16,b=1", "self-backtrack:n=32,b=1",
                  "pass@n:n=32", "dfs:nodes=32"]


def parse_run(spec: str) -> tuple[str, dict]:
    """``"method:k=v,k=v"`` -> (method, params)."""
    method, _, rest = spec.partition(":")
    if method not in METHODS:
        raise SystemExit(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    params = {}
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition("=")
        params[k.strip()] = float(v) if "." in v else int(v)
    return method, params


def bench(backend, puzzles, method: str, params: dict, seed: int) -> dict:
    solved, tokens, calls, backs, wall = [], [], [], [], []
    for i, puzzle in enumerate(puzzles):
        t0 = time.perf_counter()
        r = run_search(method, puzzle, backend, params, seed + i)
        wall.append((time.perf_counter() - t0) * 1e3)
        solved.append(r.solved)
        tokens.append(r.stats.tokens)
        calls.append(r.stats.model_calls)
        backs.append(r.stats.backtracks)
    n = len(puzzles)
    acc = sum(solved) / n
    return {"acc": acc, "se": math.sqrt(acc * (1 - acc) / n), "tokens": statistics.mean(tokens),
            "calls": statistics.mean(calls), "backtracks": statistics.mean(backs), "ms": statistics.mean(wall)}


def print_table(rows: list[dict]) -> None:
    head = (f"{'model':<24} {'method':<15} {'params':<14} {'acc %':>7} {'±se':>5} "
            f"{'tokens':>8} {'calls':>6} {'backtr':>7} {'ms':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        oracle = "*" if METHODS[r["method"]].oracle else ""
        print(f"{r['model']:<24} {r['method'] + oracle:<15} {r['params']:<14} {100 * r['acc']:>7.2f} "
              f"{100 * r['se']:>5.1f} {r['tokens']:>8.1f} {r['calls']:>6.1f} {r['backtracks']:>7.2f} {r['ms']:>8.1f}")
    print("* oracle: uses the verifier")


def solve_timing(puzzles, model: str | None, runs: int) -> None:
    """Process start to exit of ``sbt solve`` (default method, N=16, b=1) on a few puzzles."""
    times = []
    for puzzle in puzzles[:runs]:
        cmd = [sys.executable, "-m", "sbt_cli.app", "solve", str(puzzle), "--n", "16", "--b", "1", "--json"]
        if model:
            cmd += ["--model", model]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
        times.append(time.perf_counter() - t0)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"sbt solve failed: {proc.stderr.strip()}")
    print(f"sbt solve end-to-end (N=16, b=1), {len(times)} runs: median {statistics.median(times):.2f} s, "
          f"max {max(times):.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", required=True, help="JSONL puzzles (e.g. data/countdown4/test_new.jsonl)")
    ap.add_argument("--limit", type=int, default=100, help="first N puzzles of the split")
    ap.add_argument("--model", default=None, help="backtracking model (default: the shipped one for the split)")
    ap.add_argument("--sft-model", default=None, help="SFT (optimal paths only) model for the SFT rows")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--run", action="append", default=None, help='"method:k=v,..." (repeatable; default: grid)')
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--solve-timing", type=int, default=0, help="also time N `sbt solve` processes")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()

    puzzles = read_puzzles(args.split, limit=args.limit)
    if not puzzles:
        raise SystemExit(f"no puzzles in {args.split}")
    n_numbers = len(puzzles[0].numbers)
    plan = []
    if args.sft_model:
        plan += [(args.sft_model, spec) for spec in (args.run or SFT_GRID)]
    plan += [(args.model, spec) for spec in (args.run or BACKTRACK_GRID)]
    rows, loaded = [], {}
    for model, spec in plan:
        if model not in loaded:
            loaded[model] = load_backend(model, args.backend, n_numbers=n_numbers)
        backend = loaded[model]
        method, params = parse_run(spec)
        row = bench(backend, puzzles, method, params, args.seed)
        row.update(model=backend.model_name, method=method,
                   params=",".join(f"{k}={v}" for k, v in params.items()) or "-")
        rows.append(row)
        print(f"  {row['model']} {spec}: {100 * row['acc']:.2f}%", file=sys.stderr, flush=True)
    print(f"{len(puzzles)} puzzles from {args.split}, seed {args.seed}")
    print_table(rows)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1) + "\n")
    if args.solve_timing:
        solve_timing(puzzles, args.model, args.solve_timing)


if __name__ == "__main__":
    main()
