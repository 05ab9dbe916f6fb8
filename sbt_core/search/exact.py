"""The symbolic solver as a search method (an oracle: it needs no model)."""

from __future__ import annotations

import time
from typing import Iterator

from ..countdown import Puzzle, Verdict, Failure, verify
from ..solver import solve
from .events import Done, Event, SearchResult, Select, Stats


def run_exact(puzzle: Puzzle, backend=None, params: dict | None = None, seed: int = 0) -> Iterator[Event]:
    t0 = time.perf_counter()
    steps = solve(puzzle)
    lines = [str(s) for s in steps] if steps else []
    verdict = verify(puzzle, lines) if steps else Verdict(False, Failure.NO_ANSWER, None, "the puzzle has no solution")
    yield Select(lines, None, "exact solver" if steps else "no solution exists")
    stats = Stats(wall_ms=(time.perf_counter() - t0) * 1e3)
    yield Done(SearchResult(puzzle, "exact", lines, verdict, stats, params or {}))
