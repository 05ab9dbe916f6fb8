"""Best-of-N: ``n`` samples from the root, the answer with the highest mean token
log-prob among those ending in ``Goal Reached!`` (the self-backtracking selector, no
verifier, no re-expansion: self-backtracking with b = 0, under its own name and
parameters)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from ..countdown import Puzzle
from .events import Event
from .params import SamplingParams
from .self_backtrack import SelfBacktrackParams, search


@dataclass(frozen=True)
class BestOfNParams(SamplingParams):
    pass


def run_best_of_n(puzzle: Puzzle, backend, params: BestOfNParams | dict | None = None,
                  seed: int = 0) -> Iterator[Event]:
    p = BestOfNParams.coerce(params)
    algorithm = SelfBacktrackParams(n=p.n, b=0, temperature=p.temperature, top_k=p.top_k,
                                    max_new_tokens=p.max_new_tokens)
    return search(puzzle, backend, algorithm, seed, "best-of-n", p.record())
