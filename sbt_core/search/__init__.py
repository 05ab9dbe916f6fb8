"""Search strategies over a model backend. Each yields the event stream of ``events``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from ..countdown import Puzzle
from .events import Done, Event, SearchResult


@dataclass(frozen=True)
class Method:
    name: str
    run: Callable[..., Iterator[Event]]
    needs_model: bool
    oracle: bool  # uses the verifier or the solver, so it is not a fair model-only method
    params: tuple[str, ...]
    help: str


def _exact(*a, **k):
    from .exact import run_exact

    return run_exact(*a, **k)


METHODS: dict[str, Method] = {
    "exact": Method("exact", _exact, needs_model=False, oracle=True, params=(), help="symbolic solver (oracle)"),
}


def run_search(method: str, puzzle: Puzzle, backend=None, params: dict | None = None, seed: int = 0) -> SearchResult:
    """Run a method to completion and return its result (events discarded)."""
    result = None
    for event in METHODS[method].run(puzzle, backend, params or {}, seed):
        if isinstance(event, Done):
            result = event.result
    assert result is not None
    return result
