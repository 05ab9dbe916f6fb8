"""End-to-end speed of ``sbt solve`` in this tree against another revision, in one run.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_versions.py --rev 8b13fa9 [--runs 7] [--backend torch] [--method beam]

The other revision's code (sbt_core, sbt_cli, training, harness, tui) is exported with
``git archive`` into a temporary folder; both trees use this tree's models (``SBT_MODELS_DIR``)
and run the same command (default ``sbt solve "19 90 41 32 -> 80"``, the default search),
alternating (A, B, A, B, ...) so that the machine's load falls on both alike. Prints the
median wall time of each (process start to exit) and the ratio. A figure is only meaningful
on an otherwise idle machine: say which machine it came from (``lscpu``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = ("sbt_core", "sbt_cli", "training", "harness", "tui")
RUNNER = "import sys; sys.path.insert(0, sys.argv.pop(1)); from sbt_cli.app import main; sys.argv[0] = 'sbt'; main()"


def export(rev: str, into: Path) -> None:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, *CODE], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)


def timed(tree: Path, args: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", RUNNER, str(tree), *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode not in (0, 1):
        raise SystemExit(f"{tree}: exit {out.returncode}\n{out.stderr[-2000:]}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", required=True, help="the revision to compare with (e.g. a commit before a change)")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--puzzle", default="19 90 41 32 -> 80")
    ap.add_argument("--method", help="sbt solve --method (default: the model's default search)")
    args = ap.parse_args()
    env = {**os.environ, "SBT_MODELS_DIR": str(ROOT / "models"), "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = ["solve", args.puzzle, "--backend", args.backend] + (["--method", args.method] if args.method else [])
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        export(args.rev, base)
        for tree in (ROOT, base):  # check each tree imports its own code, and warm the caches
            where = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                                    "import sbt_core; print(sbt_core.__file__)", str(tree)],
                                   env=env, capture_output=True, text=True, check=True).stdout.strip()
            if not where.startswith(str(tree)):
                raise SystemExit(f"{tree} imports sbt_core from {where}: cannot compare")
            timed(tree, cmd, env)
        now, then = [], []
        for _ in range(args.runs):
            now.append(timed(ROOT, cmd, env))
            then.append(timed(base, cmd, env))
    a, b = statistics.median(now), statistics.median(then)
    print(f"sbt {' '.join(cmd)}  ({args.runs} alternating runs each)")
    print(f"  this tree     median {a:.3f} s   (min {min(now):.3f}, max {max(now):.3f})")
    print(f"  {args.rev:<13} median {b:.3f} s   (min {min(then):.3f}, max {max(then):.3f})")
    print(f"  ratio this/{args.rev}: {a / b:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
