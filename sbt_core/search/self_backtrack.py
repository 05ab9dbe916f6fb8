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
"""

from __future__ import annotations

from typing import Iterator

from ..countdown import Puzzle
from ..limits import MAX_SAMPLES_PER_ROUND
from ..trace import parse_response
from .common import SearchRun, mean, resolve_params
from .events import Backtrack, Event

DEFAULTS = {"n": 16, "b": 1, "temperature": 0.7, "top_k": 0, "max_new_tokens": 96, "max_states": 0}


def run_self_backtrack(puzzle: Puzzle, backend, params: dict | None = None, seed: int = 0,
                       *, method: str = "self-backtrack") -> Iterator[Event]:
    p = resolve_params(DEFAULTS, params)
    shown = dict(p)
    if method == "best-of-n":
        p["b"] = 0
        shown = {k: v for k, v in p.items() if k not in ("b", "max_states")}
    run = SearchRun(method, puzzle, backend, shown, seed)
    frontier: list[list[str]] = [[]]
    for rnd in range(p["b"] + 1):
        if not frontier:
            break
        prefix_lps = {tuple(s): run.score_prefix(s) for s in frontier}
        expansions = yield from run.expand(frontier, p["n"], rnd, temperature=p["temperature"],
                                           max_new_tokens=p["max_new_tokens"], top_k=p["top_k"],
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
                    rolled = full[:-1]
                    yield Backtrack(e.node, i, full[-1] if full else "", list(rolled), rnd)
                    queued[tuple(rolled)] = queued.get(tuple(rolled), 0) + 1
        frontier = _next_states(queued, round_cap(p["n"], p["max_states"]))
    best = run.best_candidate()
    if best is None:
        yield from run.finish(None, None, "no sample ended in Goal Reached!; best attempt shown")
    else:
        why = f"highest mean token log-prob among {len(run.candidates)} candidate(s)"
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
