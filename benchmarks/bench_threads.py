"""Torch inference threads: the same self-backtracking search on 1 and 2 threads, idle and
beside busy processes, in one run (ratios against the default).

    python benchmarks/bench_threads.py [--model countdown4-backtrack] [--limit 10] [--busy 0 1]

Each configuration runs in its own process (OpenMP reads OMP_WAIT_POLICY when torch loads)
on the first --limit puzzles of --split with self-backtracking N=16, b=1 (the `sbt solve`
default) and prints the search seconds per puzzle and the ratio to the default
configuration (``default``: no thread variables set, i.e. the backend's own choice). With
``--busy K`` K processes spin on the CPU during the measurement (contention, as when a
benchmark or a training run shares the machine). The answers are compared too: thread
counts change float rounding only, so the solved count must be the same in every row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CONFIGS = {
    "default": {},
    "1 thread, passive": {"SBT_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"},
    "2 threads, passive": {"SBT_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
    "2 threads, spinning": {"SBT_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"},
}

WORKER = """
import json, sys, time
from sbt_core.backends import load_backend
from sbt_core.generate import read_puzzles
from sbt_core.models import search_defaults
from sbt_core.search import METHODS, method_params
model, split, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
puzzles = read_puzzles(split)[:limit]
engine = load_backend(model, "torch", n_numbers=len(puzzles[0].numbers))
params = method_params("self-backtrack", search_defaults(model, len(puzzles[0].numbers)), {"n": 16, "b": 1})
import torch
solved, t0 = 0, time.perf_counter()
for i, p in enumerate(puzzles):
    *_, done = METHODS["self-backtrack"].run(p, engine, params, i)
    solved += done.result.solved
print(json.dumps({"s_per_puzzle": (time.perf_counter() - t0) / len(puzzles), "solved": solved,
                  "threads": engine.threads or torch.get_num_threads()}))
"""


def measure(env_extra: dict, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("SBT_NUM_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(env_extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", WORKER, args.model, args.split, str(args.limit)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="countdown4-backtrack")
    ap.add_argument("--split", default=str(ROOT / "data/countdown4/test_new.jsonl"))
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 1], help="busy processes per series")
    args = ap.parse_args()
    print(f"self-backtrack N=16 b=1 on {args.limit} puzzles of {args.split}, model {args.model}, "
          f"{os.cpu_count()} CPUs")
    for busy in args.busy:
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            time.sleep(0.5 if busy else 0)
            rows = {name: measure(env, args) for name, env in CONFIGS.items()}
        finally:
            for s in spinners:
                s.kill()
        base = rows["default"]["s_per_puzzle"]
        print(f"\n{busy} busy process(es):")
        for name, r in rows.items():
            print(f"  {name:<22} {r['s_per_puzzle']:7.3f} s/puzzle  x{r['s_per_puzzle'] / base:5.2f} of default"
                  f"  (torch threads {r['threads']}, solved {r['solved']}/{args.limit})")


if __name__ == "__main__":
    main()
