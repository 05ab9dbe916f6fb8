"""Greedy decoding: one temperature-0 completion from the root, verified strictly."""

from __future__ import annotations

from typing import Iterator

from ..countdown import Puzzle
from ..trace import parse_response
from .common import SearchRun, resolve_params
from .events import Event

DEFAULTS = {"max_new_tokens": 96}


def run_greedy(puzzle: Puzzle, backend, params: dict | None = None, seed: int = 0) -> Iterator[Event]:
    p = resolve_params(DEFAULTS, params)
    run = SearchRun("greedy", puzzle, backend, p, seed)
    (expansion,) = yield from run.expand([[]], 1, temperature=0.0, max_new_tokens=p["max_new_tokens"])
    c = expansion.completions[0]
    resp = parse_response(c.text)
    if resp.reached_goal:
        yield run.add_candidate(resp.lines, c.mean_logprob)
    run.note_attempt(resp.lines, resp.ending, c.mean_logprob)
    yield from run.finish(resp.lines, c.mean_logprob, f"greedy decoding (ended: {resp.ending})")
