"""pass@n (an ORACLE: it uses the verifier): ``n`` samples from the root; solved when
any of them verifies. The first verifying sample (in sample order) is the answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from ..countdown import Puzzle, verify
from ..trace import parse_response
from .common import SearchRun
from .events import Event
from .params import SamplingParams


@dataclass(frozen=True)
class PassAtNParams(SamplingParams):
    pass


def run_pass_at_n(puzzle: Puzzle, backend, params: PassAtNParams | dict | None = None, seed: int = 0) -> Iterator[Event]:
    p = PassAtNParams.coerce(params)
    run = SearchRun("pass@n", puzzle, backend, p.record(), seed)
    (expansion,) = yield from run.expand([[]], p.n, temperature=p.temperature,
                                         max_new_tokens=p.max_new_tokens, top_k=p.top_k, emit_samples=False)
    found = None
    for i, c in enumerate(expansion.completions):
        yield from run.sample_events(expansion.node, i, c)
        resp = parse_response(c.text)
        run.note_attempt(resp.lines, resp.ending, c.mean_logprob)
        if resp.lines and verify(puzzle, resp.lines):
            yield run.add_candidate(resp.lines, c.mean_logprob)
            found = found or (resp.lines, c.mean_logprob)
    if found is None:
        yield from run.finish(None, None, f"none of {p.n} samples verifies; best attempt shown")
    else:
        yield from run.finish(found[0], found[1], "first sample that the verifier accepts (oracle)")
