"""Speed of the Countdown core: exact solver per puzzle and generator throughput.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_core.py [--puzzles 10000] [--gen 100000] [--workers 2]

Prints solver median / p99 milliseconds per Countdown-4 puzzle (issue 2 goal: median <= 1 ms)
in three regimes, and generator puzzles per second (goal: 500k Countdown-4 in <= 5 min).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time

from sbt_core.countdown import Puzzle, verify
from sbt_core.generate import CHUNK, GeneratorConfig, generate_split
from sbt_core.solver import clear_cache, is_solvable, solve


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def line(name: str, ms: list[float]) -> None:
    print(f"  {name:<44} median {statistics.median(ms):7.3f} ms   p99 {pct(ms, 0.99):7.3f} ms   "
          f"mean {statistics.fmean(ms):7.3f} ms   max {max(ms):8.2f} ms")


def bench_solver(n: int) -> None:
    cfg = GeneratorConfig(seed=12345, sizes={"train": n})
    puzzles = [Puzzle(tuple(r["numbers"]), r["target"]) for r in generate_split(cfg, "train", set())]
    print(f"solver: solve() on {len(puzzles):,} generated Countdown-4 puzzles (seed 12345, all solvable)")

    def run(per_puzzle_clear: bool) -> list[float]:
        out = []
        for p in puzzles:
            if per_puzzle_clear:
                clear_cache()
            t = time.perf_counter()
            steps = solve(p)
            out.append((time.perf_counter() - t) * 1e3)
            assert steps is not None
        return out

    clear_cache()
    line("cold cache, one pass (first)", run(False))
    warm = run(False)
    line("warm cache, same puzzles again", warm)
    sample = puzzles[: min(2000, len(puzzles))]
    saved, puzzles[:] = list(puzzles), sample
    line(f"fully cold (cache cleared each, n={len(sample):,})", run(True))
    puzzles[:] = saved
    for p in random.Random(1).sample(puzzles, 200):
        assert verify(p, [str(s) for s in solve(p)]).ok

    # the generator's inner loop: fresh random draws, most of them unsolvable
    rng = random.Random(7)
    draws = [(tuple(rng.randint(1, 99) for _ in range(4)), rng.randint(10, 100)) for _ in range(n)]
    clear_cache()
    ms, solvable = [], 0
    for nums, target in draws:
        t = time.perf_counter()
        solvable += is_solvable(nums, target)
        ms.append((time.perf_counter() - t) * 1e3)
    line(f"is_solvable, random draws ({solvable / n:.0%} solvable)", ms)
    clear_cache()
    ms = []
    for nums, target in draws:
        t = time.perf_counter()
        solve(Puzzle(nums, target))
        ms.append((time.perf_counter() - t) * 1e3)
    line("solve, random draws incl. 'no solution'", ms)


def bench_generator(n: int, workers: int) -> None:
    for w in sorted({1, workers}):
        size = n if w == workers else max(CHUNK, n // 5)
        cfg = GeneratorConfig(seed=0, sizes={"train": size})
        t = time.perf_counter()
        rows = generate_split(cfg, "train", set(), workers=w)
        dt = time.perf_counter() - t
        assert len(rows) == size
        print(f"generator: {size:,} Countdown-4 train puzzles, {w} worker(s): {dt:6.1f} s = "
              f"{size / dt:8,.0f} puzzles/s  (500k would take {500_000 / (size / dt) / 60:.1f} min)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--puzzles", type=int, default=10_000)
    ap.add_argument("--gen", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(f"python {platform.python_version()}, {os.cpu_count()} cpus, load average {load:.2f}")
    bench_solver(args.puzzles)
    bench_generator(args.gen, args.workers)


if __name__ == "__main__":
    main()
