"""Beam search of width ``width`` from the root: the best-ranked beam that ends in
``Goal Reached!`` (else the best-ranked beam), verified strictly."""

from __future__ import annotations

from typing import Iterator

from ..countdown import Puzzle
from ..trace import parse_response
from .common import SearchRun, resolve_params, state_prompt
from .events import Event, Expand

DEFAULTS = {"width": 4, "max_new_tokens": 96}


def run_beam(puzzle: Puzzle, backend, params: dict | None = None, seed: int = 0) -> Iterator[Event]:
    p = resolve_params(DEFAULTS, params)
    run = SearchRun("beam", puzzle, backend, p, seed)
    node = run.new_node()
    yield Expand(node, [], p["width"], 0)
    beams = backend.beam(state_prompt(puzzle, []), p["width"], p["max_new_tokens"])
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

