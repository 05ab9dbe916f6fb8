"""Self-backtracking search (the paper's Algorithm 1), with every distinct rolled-back state.

Round 0 expands the root (empty response) with ``n`` samples. In every sample:

- ending in ``Goal Reached!``: a *candidate* (prefix + its step lines);
- ending in ``<backtrack>``: rolled back by one step -- the wrong step (the last line of
  prefix + sample lines) and the token are dropped -- and the rolled-back state is
  queued for the next round;
- anything else (length limit, end token without a marker): only an attempt.

Rounds 1..b expand each DISTINCT queued state of the previous round once, with ``n``
samples each, in one batched model call (a state is re-expanded even if an earlier round
expanded it: new samples). Budget: ``max_states`` caps the states per round (0 = no cap
but the tool's: ``sbt_core.limits.MAX_SAMPLES_PER_ROUND // n`` states, so that one round's
batched call stays bounded; when capped, the states with the most backtracks, then the
earliest, go first), so a search draws at most ``n * (1 + sum of states per round)``
samples. ``b = 0`` is plain sampling with the same selector (Best-of-N).

Selection: among candidates, the highest negative perplexity = mean token log-prob of
the whole response (a rolled-back prefix's tokens are scored once per state with
``backend.score``). Duplicate answers are merged without penalty: the best score is kept
and the count grows; ties go to the larger count, then the first found. No verifier is
used in the search; the chosen answer is then judged by ``verify`` (strict). Without a
candidate the result is the best attempt and its failure.

``variant="authors"`` follows the authors' public decoding script (``SelfBackTrackingDecoder``
in their ``src/decoder/decoders.py``) where it differs from the above: a round queues at
most ``int(sqrt(n))`` rolled-back states, the first ones in sample order, and skips a
state already expanded or queued (the root included); duplicate answers have their scores
SUMMED (mean log-probs are negative, so a repeated answer ranks lower). Not matched: their
samples come from transformers' beam sampling (``num_beams = n`` with ``do_sample``), ours
are independent samples; without a candidate they return their last call's first
sample, we return the best attempt. ``max_states`` caps the states of a round in both.

Best-of-N is this search with ``b = 0`` under its own name and parameters
(``best_of_n``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

from ..countdown import Puzzle
from ..limits import MAX_SAMPLES_PER_ROUND
from ..trace import parse_response
from .common import SearchRun, mean
from .events import Backtrack, Event
from .params import MAX_NEW_TOKENS_HELP, N_HELP, TEMPERATURE_HELP, TOP_K_HELP, SearchParams, param


@dataclass(frozen=True)
class SelfBacktrackParams(SearchParams):
    n: int = param(16, N_HELP)
    b: int = param(1, "backtracking budget: rounds of re-expanding rolled-back states (0: Best-of-N)")
    temperature: float = param(0.7, TEMPERATURE_HELP)
    top_k: int = param(0, TOP_K_HELP)
    max_new_tokens: int = param(96, MAX_NEW_TOKENS_HELP)
    max_states: int = param(0, "most states one round expands (0: the tool's limit)")
    variant: str = param("all-states", "all-states: every distinct rolled-back state; authors: the authors' "
                         "script (sqrt(n) new states a round, visited states skipped, duplicate scores summed)",
                         recorded_at_default=False)


def run_self_backtrack(puzzle: Puzzle, backend, params: SelfBacktrackParams | dict | None = None,
                       seed: int = 0) -> Iterator[Event]:
    p = SelfBacktrackParams.coerce(params)
    return search(puzzle, backend, p, seed, "self-backtrack", p.record())


def search(puzzle: Puzzle, backend, p: SelfBacktrackParams, seed: int, label: str,
           recorded: dict) -> Iterator[Event]:
    """Algorithm 1 with ``p``; the result is labelled ``label`` and records ``recorded``."""
    run = SearchRun(label, puzzle, backend, recorded, seed)
    authors = p.variant == "authors"
    run.sum_duplicates = authors
    visited: set[tuple[str, ...]] = {()}
    cap = round_cap(p.n, p.max_states)
    if authors:
        cap = min(cap, max(1, math.isqrt(p.n)))
    frontier: list[list[str]] = [[]]
    for rnd in range(p.b + 1):
        if not frontier:
            break
        prefix_lps = {tuple(s): run.score_prefix(s) for s in frontier}
        expansions = yield from run.expand(frontier, p.n, rnd, temperature=p.temperature,
                                           max_new_tokens=p.max_new_tokens, top_k=p.top_k,
                                           emit_samples=False)
        queued: dict[tuple[str, ...], int] = {}
        for e in expansions:
            for i, c in enumerate(e.completions):
                yield from run.sample_events(e.node, i, c)  # each sample, then its outcome
                resp = parse_response(c.text)
                full = e.prefix + resp.lines
                score = mean(prefix_lps[tuple(e.prefix)] + list(c.token_logprobs))
                run.note_attempt(full, resp.ending, score)
                if resp.reached_goal:
                    yield run.add_candidate(full, score)
                elif resp.backtracked:
                    run.stats.backtracks += 1
                    rolled = tuple(full[:-1])
                    yield Backtrack(e.node, i, full[-1] if full else "", list(rolled), rnd)
                    if not authors:
                        queued[rolled] = queued.get(rolled, 0) + 1
                    elif len(queued) < cap and rolled not in visited:
                        queued[rolled] = 1
                        visited.add(rolled)
        frontier = _next_states(queued, cap)
    best = run.best_candidate()
    if best is None:
        yield from run.finish(None, None, "no sample ended in Goal Reached!; best attempt shown")
    else:
        how = "summed mean token log-prob" if authors else "highest mean token log-prob"
        why = f"{how} among {len(run.candidates)} candidate(s)"
        yield from run.finish(best.lines, best.score, why + (f", found {best.count}x" if best.count > 1 else ""))


def round_cap(n: int, max_states: int) -> int:
    """The most states a round expands: ``max_states`` (0: none), and never more than
    ``MAX_SAMPLES_PER_ROUND // n`` (at least 1)."""
    tool = max(1, MAX_SAMPLES_PER_ROUND // max(1, n))
    return min(max_states, tool) if max_states else tool


def _next_states(queued: dict[tuple[str, ...], int], cap: int) -> list[list[str]]:
    states = list(queued)
    if cap and len(states) > cap:
        order = {s: i for i, s in enumerate(states)}
        states = sorted(states, key=lambda s: (-queued[s], order[s]))[:cap]
    return [list(s) for s in states]
