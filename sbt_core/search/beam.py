"""Beam search of width ``width`` from the root: the best-ranked beam that ends in
``Goal Reached!`` (else the best-ranked beam), verified strictly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from ..countdown import Puzzle
from ..trace import parse_response
from .common import SearchRun, state_prompt
from .events import Event, Expand
from .params import MAX_NEW_TOKENS_HELP, SearchParams, param


@dataclass(frozen=True)
class BeamParams(SearchParams):
    width: int = param(4, "beams kept at each step")
    max_new_tokens: int = param(96, MAX_NEW_TOKENS_HELP)


def run_beam(puzzle: Puzzle, backend, params: BeamParams | dict | None = None, seed: int = 0) -> Iterator[Event]:
    p = BeamParams.coerce(params)
    run = SearchRun("beam", puzzle, backend, p.record(), seed)
    node = run.new_node()
    yield Expand(node, [], p.width, 0)
    beams = backend.beam(state_prompt(puzzle, []), p.width, p.max_new_tokens)
    run.stats.model_calls += 1
    run.stats.expansions += 1
    chosen = None
    for i, c in enumerate(beams):
        run.stats.tokens += c.n_tokens
        yield from run.sample_events(node, i, c)
        resp = parse_response(c.text)
        run.note_attempt(resp.lines, resp.ending, c.mean_logprob)
        if resp.reached_goal:
            yield run.add_candidate(resp.lines, c.mean_logprob)
            if chosen is None:
                chosen = (resp.lines, c.mean_logprob, i)
    if chosen is None:
        yield from run.finish(None, None, "no beam ended in Goal Reached!; best beam shown")
    else:
        yield from run.finish(chosen[0], chosen[1], f"beam {chosen[2] + 1} of {len(beams)}: best-ranked finished beam")

