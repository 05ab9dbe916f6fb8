"""Best-of-N: ``n`` samples from the root, the answer with the highest mean token
log-prob among those ending in ``Goal Reached!`` (the self-backtracking selector, no
verifier, no re-expansion: self-backtracking with b = 0)."""

from __future__ import annotations

from typing import Iterator

from ..countdown import Puzzle
from .events import Event
from .self_backtrack import run_self_backtrack

DEFAULTS = {"n": 16, "temperature": 0.7, "top_k": 0, "max_new_tokens": 96}


def run_best_of_n(puzzle: Puzzle, backend, params: dict | None = None, seed: int = 0) -> Iterator[Event]:
    params = {k: v for k, v in (params or {}).items() if k in DEFAULTS}
    return run_self_backtrack(puzzle, backend, {**DEFAULTS, **params, "b": 0}, seed, method="best-of-n")
