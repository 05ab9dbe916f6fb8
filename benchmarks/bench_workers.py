"""`sbt bench --workers`: the same bench with 1 and with K worker processes, in one run
(puzzles per second of each, the ratio), and the two result sets compared row by row.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_workers.py [--limit 200] [--workers 2] [--backend llama]

Each bench is `sbt bench --methods self-backtrack --n 32 --b 1` of the shipped
countdown4-backtrack model on the first --limit puzzles of data/countdown4/test_new.jsonl
(llama backend when llama_cpp is importable, else torch), into its own temporary results
database. Two speeds per bench: end to end (the command's wall time, model loading and
worker start-up included) and searching (from the run's start to its last row). The result
rows must be identical (timings left out: wall_ms, finished, and wall_ms inside the traces):
same seeds, same answers, same run identity; the script exits 1 if they are not.
Measure on an otherwise idle machine: another process on the cores makes the ratio meaningless.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import zlib
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMING = {"wall_ms", "finished"}


def untimed(value):
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def rows(db: Path) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        out = [dict(r) for r in conn.execute("select runs.key run_key, results.* from results "
                                             "join runs on runs.id = results.run_id order by runs.key, puzzle_index")]
    finally:
        conn.close()
    for r in out:
        r.pop("run_id")
        if r["trace"] is not None:
            r["trace"] = json.loads(zlib.decompress(r["trace"]))
    return [untimed(r) for r in out]


def search_seconds(db: Path) -> float:
    """From the run's start to its last stored row."""
    conn = sqlite3.connect(db)
    try:
        started, last = conn.execute("select min(runs.started), max(results.finished) from runs "
                                     "join results on results.run_id = runs.id").fetchone()
    finally:
        conn.close()
    stamp = lambda s: datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()  # noqa: E731
    return stamp(last) - stamp(started)


def run_bench(args, workers: int, db: Path) -> dict:
    cmd = [sys.executable, "-m", "sbt_cli.app", "bench", "--puzzles", str(args.puzzles), "--limit", str(args.limit),
           "--model", args.model, "--backend", args.backend, "--methods", "self-backtrack", "--n", str(args.n),
           "--b", str(args.b), "--db", str(db), "--workers", str(workers), "--quiet"]
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), "COLUMNS": "160"}
    env.pop("SBT_DB", None)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"sbt bench --workers {workers} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    search = search_seconds(db)
    return {"workers": workers, "wall_s": wall, "search_s": search, "per_s": args.limit / wall,
            "search_per_s": args.limit / search}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=200, help="puzzles (the first of --puzzles)")
    ap.add_argument("--workers", type=int, default=2, help="compared with 1")
    ap.add_argument("--model", default="countdown4-backtrack")
    ap.add_argument("--puzzles", type=Path, default=ROOT / "data" / "countdown4" / "test_new.jsonl")
    ap.add_argument("--backend", default="llama" if importlib.util.find_spec("llama_cpp") else "torch")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--b", type=int, default=1)
    args = ap.parse_args()
    print(f"sbt bench self-backtrack N={args.n} b={args.b}, {args.model} on {args.backend}, {args.limit} puzzles of "
          f"{args.puzzles.name}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        results = [run_bench(args, k, Path(tmp) / f"workers{k}.db") for k in (1, args.workers)]
        same = rows(Path(tmp) / "workers1.db") == rows(Path(tmp) / f"workers{args.workers}.db")
    print(f"{'workers':>8} {'wall s':>8} {'puzzles/s':>10} {'search s':>9} {'searched/s':>11}")
    for r in results:
        print(f"{r['workers']:>8} {r['wall_s']:>8.1f} {r['per_s']:>10.2f} {r['search_s']:>9.1f} "
              f"{r['search_per_s']:>11.2f}")
    one, many = results
    print(f"speed-up with {args.workers} workers: {many['per_s'] / one['per_s']:.2f}x end to end, "
          f"{many['search_per_s'] / one['search_per_s']:.2f}x searching")
    print(f"result rows identical: {'yes' if same else 'NO'}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
