"""Greedy decoding: one temperature-0 completion from the root, verified strictly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from ..countdown import Puzzle
from ..trace import parse_response
from .common import SearchRun
from .events import Event
from .params import MAX_NEW_TOKENS_HELP, SearchParams, param


@dataclass(frozen=True)
class GreedyParams(SearchParams):
    max_new_tokens: int = param(96, MAX_NEW_TOKENS_HELP)


def run_greedy(puzzle: Puzzle, backend, params: GreedyParams | dict | None = None, seed: int = 0) -> Iterator[Event]:
    p = GreedyParams.coerce(params)
    run = SearchRun("greedy", puzzle, backend, p.record(), seed)
    (expansion,) = yield from run.expand([[]], 1, temperature=0.0, max_new_tokens=p.max_new_tokens)
    c = expansion.completions[0]
    resp = parse_response(c.text)
    if resp.reached_goal:
        yield run.add_candidate(resp.lines, c.mean_logprob)
    run.note_attempt(resp.lines, resp.ending, c.mean_logprob)
    yield from run.finish(resp.lines, c.mean_logprob, f"greedy decoding (ended: {resp.ending})")
