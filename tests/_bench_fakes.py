"""Fake search methods and helpers for the harness tests (no model, no torch).

``register()`` (or the tests' fixture) adds to ``METHODS``:

- ``fake``: no model; params n, b, temperature. Deterministic in (puzzle, seed): solved
  with a probability that grows with n and b; unsolved answers cycle through failure
  categories. ``FAKE_DELAY`` (seconds) slows each puzzle; ``FAKE_LOG`` (a file) gets one
  line ``<pid> <puzzle>`` per puzzle searched.
- ``fake-model``: the same, but ``needs_model`` (params n): tests pass a fake loader.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sbt_core.countdown import Puzzle, verify
from sbt_core.search import METHODS, Method
from sbt_core.search.events import Done, Sample, SearchResult, Select, Stats
from sbt_core.search.params import SearchParams, param

TESTS = Path(__file__).resolve().parent


def run_fake(puzzle: Puzzle, backend, params: dict, seed: int):
    delay = float(os.environ.get("FAKE_DELAY", "0") or 0)
    log = os.environ.get("FAKE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {puzzle}\n")
    if delay:
        time.sleep(delay)
    n, b = int(params.get("n", 1)), int(params.get("b", 0))
    p_ok = min(0.95, 0.2 + 0.1 * math.log2(max(n, 1)) + 0.15 * b)
    u = (seed % 1000) / 1000
    a, c, *rest = puzzle.numbers
    if u < p_ok:  # the canonical answer of puzzles made by make_puzzles: the running sum
        lines, acc = [], a
        for x in [c, *rest]:
            lines.append(f"{acc} + {x} = {acc + x}")
            acc += x
    elif seed % 3 == 0:
        lines = [f"{a} + {c} = {a + c + 1}"]  # incorrect_result
    elif seed % 3 == 1:
        lines = []  # no answer
    else:
        lines = [f"{a} + {c} = {a + c}"]  # stops early: unused numbers / not reached
    yield Sample(0, 0, "\n".join(lines), lines, "goal" if lines else "none", -0.5, 10 * n)
    verdict = verify(puzzle, lines)
    yield Select(lines, -0.5, "fake")
    stats = Stats(model_calls=1 + b, tokens=10 * n * (1 + b), backtracks=b * (seed % 3), expansions=1 + b,
                  candidates=1 if lines else 0, wall_ms=1000 * delay + 1.0)
    yield Done(SearchResult(puzzle, "fake", lines, verdict, stats, dict(params), -0.5 if lines else None))


def run_fake_model(puzzle, backend, params, seed):
    assert backend is not None and backend.model_name
    backend.calls += 1
    yield from run_fake(puzzle, backend, params, seed)


@dataclass(frozen=True)
class FakeParams(SearchParams):
    n: int = param(4, "samples")
    b: int = param(0, "rounds")
    temperature: float = param(0.7, "temperature")


@dataclass(frozen=True)
class FakeModelParams(SearchParams):
    n: int = param(4, "samples")


FAKE_METHODS = {
    "fake": Method("fake", run_fake, FakeParams, needs_model=False, oracle=False, help="fake (tests)"),
    "fake-model": Method("fake-model", run_fake_model, FakeModelParams, needs_model=True, oracle=False,
                         help="fake needing a model (tests)"),
}


def register() -> None:
    """Add the fakes to METHODS for good (subprocesses); tests use a monkeypatch fixture."""
    METHODS.update(FAKE_METHODS)


class FakeBackend:
    backend_name = "fake"

    def __init__(self, model: str | None) -> None:
        self.model_name = model or "default-model"
        self.model_sha256 = f"sha-{self.model_name}"
        self.calls = 0


def fake_loader(model, backend="torch", n_numbers=4):
    return FakeBackend(model)


def make_puzzles(path: Path, count: int, seed: int = 0) -> list[dict]:
    """``count`` distinct solvable puzzles (target = the sum of the numbers) as JSONL."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < count:
        nums = [rng.randint(1, 25) for _ in range(4)]
        key = tuple(sorted(nums))
        if key in seen:
            continue
        seen.add(key)
        rows.append({"numbers": nums, "target": sum(nums)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


# a subprocess entry point: `python -c BOOT sbt-args...` runs `sbt` with the fakes registered
BOOT = (
    "import sys; sys.path.insert(0, {tests!r}); import _bench_fakes; _bench_fakes.register(); "
    "from sbt_cli.app import main; sys.argv = ['sbt'] + sys.argv[1:]; main()"
).format(tests=str(TESTS))


def sbt_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", BOOT, *args]


def sub_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1", COLUMNS="160")
    env.pop("SBT_DB", None)
    env.update(extra)
    return env
