"""Shared machinery of the model-based strategies: expansion with events, candidate
pooling with duplicate merging, best-attempt tracking and the final verified result.

Accounting (``Stats``): ``model_calls`` counts backend requests (one ``sample`` call for
a whole batch of states, one ``beam``, one ``score``); ``tokens`` counts generated tokens;
``expansions`` counts expanded states (nodes); ``backtracks`` counts samples that ended
in ``<backtrack>`` (dfs: dead ends left); ``candidates`` counts distinct answers ending
in ``Goal Reached!`` (dfs, pass@n: distinct verified answers).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Generator, Iterator

from ..countdown import Failure, Puzzle, Verdict, parse_step, verify
from ..errors import SbtError
from ..trace import parse_response, prompt, render_steps
from .events import Candidate, Done, Event, Expand, Sample, SearchResult, Select, Stats, StepEvent

ENDING_RANK = {"goal": 2, "none": 1, "backtrack": 0}


MINIMUM = {"n": 1, "b": 0, "width": 1, "nodes": 1, "temperature": 0, "top_k": 0, "max_new_tokens": 1, "max_states": 0}


def resolve_params(defaults: dict[str, Any], params: dict | None) -> dict[str, Any]:
    """The method's parameters: its defaults overridden by the known keys of ``params``
    (``None`` values ignored). Raises ``SbtError`` for a value of the wrong type or range."""
    out = dict(defaults)
    for key, value in (params or {}).items():
        if key not in out or value is None:
            continue
        try:
            out[key] = type(defaults[key])(value)
        except (TypeError, ValueError):
            raise SbtError(f"parameter {key} must be a number, got {value!r}") from None
        if key in MINIMUM and out[key] < MINIMUM[key]:
            raise SbtError(f"parameter {key} must be at least {MINIMUM[key]}, got {value}")
    return out


def state_prompt(puzzle: Puzzle, prefix: list[str]) -> str:
    """The model input for a search state: the puzzle prompt and the step lines so far."""
    return prompt(puzzle) + render_steps(prefix)


def mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("-inf")


@dataclass
class Scored:
    lines: list[str]
    score: float
    count: int = 1
    order: int = 0


@dataclass
class Expansion:
    """The samples of one expanded state."""

    node: int
    prefix: list[str]
    completions: list = field(default_factory=list)


class SearchRun:
    """Book-keeping of one search: stats, node ids, seeds, candidates, best attempt."""

    def __init__(self, method: str, puzzle: Puzzle, backend, params: dict, seed: int) -> None:
        if backend is None:
            raise ValueError(f"method {method!r} needs a model backend")
        self.method, self.puzzle, self.backend, self.params, self.seed = method, puzzle, backend, params, seed
        self.t0 = time.perf_counter()
        self.stats = Stats()
        self.next_node = 0
        self.candidates: dict[tuple[str, ...], Scored] = {}
        self.attempt: tuple[tuple[int, float], list[str]] | None = None

    # -- seeds and nodes ----------------------------------------------------------
    def call_seed(self) -> int:
        """A seed per model call, derived from the run seed and the call index."""
        return (self.seed * 1_000_003 + self.stats.model_calls * 7_919) % (2**31 - 1)

    def new_node(self) -> int:
        self.next_node += 1
        return self.next_node - 1

    # -- model calls --------------------------------------------------------------
    def expand(self, prefixes: list[list[str]], n: int, round: int = 0, *, temperature: float,
               max_new_tokens: int, top_k: int | None = None, stop_at_line: bool = False,
               emit_samples: bool = True) -> Generator[Event, None, list[Expansion]]:
        """Sample ``n`` continuations of each state in one batched call; yields Expand
        events (and, with ``emit_samples``, the Sample and StepEvent events) and returns
        the expansions."""
        out = [Expansion(self.new_node(), list(p)) for p in prefixes]
        for e in out:
            yield Expand(e.node, list(e.prefix), n, round)
        seed = self.call_seed()
        batches = self.backend.sample([state_prompt(self.puzzle, e.prefix) for e in out], n, temperature,
                                      max_new_tokens, seed, top_k=top_k or None, stop_at_line=stop_at_line)
        self.stats.model_calls += 1
        self.stats.expansions += len(out)
        for e, comps in zip(out, batches):
            e.completions = comps
            self.stats.tokens += sum(c.n_tokens for c in comps)
            if emit_samples:
                for i, c in enumerate(comps):
                    yield from self.sample_events(e.node, i, c)
        return out

    def sample_events(self, node: int, index: int, completion) -> Iterator[Event]:
        resp = parse_response(completion.text)
        yield Sample(node, index, completion.text, list(resp.lines), resp.ending,
                     completion.mean_logprob, completion.n_tokens)
        for line, step in zip(resp.lines, resp.steps):
            yield StepEvent(node, index, line, step is not None)

    def score_prefix(self, prefix: list[str]) -> list[float]:
        """Token log-probs of a response prefix (one ``score`` call; [] for the root)."""
        if not prefix:
            return []
        self.stats.model_calls += 1
        return list(self.backend.score(prompt(self.puzzle), render_steps(prefix)))

    # -- candidates and attempts -----------------------------------------------------
    def add_candidate(self, lines: list[str], score: float) -> Candidate:
        """Pool a complete answer; a duplicate keeps its best score and counts up (no penalty)."""
        key = tuple(lines)
        got = self.candidates.get(key)
        if got is None:
            got = self.candidates[key] = Scored(list(lines), score, 1, len(self.candidates))
            self.stats.candidates += 1
        else:
            got.count += 1
            got.score = max(got.score, score)
        return Candidate(list(lines), got.score, got.count)

    def best_candidate(self) -> Scored | None:
        """Highest score; ties: more duplicates, then first found."""
        if not self.candidates:
            return None
        return max(self.candidates.values(), key=lambda s: (s.score, s.count, -s.order))

    def note_attempt(self, lines: list[str], ending: str, score: float) -> None:
        """Remember the best attempt (goal > unfinished > backtrack, then score; first wins ties)."""
        rank = (ENDING_RANK.get(ending, 0), score)
        if self.attempt is None or rank > self.attempt[0]:
            self.attempt = (rank, list(lines))

    # -- the end --------------------------------------------------------------------
    def finish(self, lines: list[str] | None, score: float | None, reason: str) -> Iterator[Event]:
        """Select ``lines`` (or, if None, the best attempt), verify strictly, yield Select and Done."""
        if lines is None:
            lines = self.attempt[1] if self.attempt else []
            score = self.attempt[0][1] if self.attempt else None
        if lines:
            verdict = verify(self.puzzle, lines)
        else:
            verdict = Verdict(False, Failure.NO_ANSWER, None, "the model gave no answer")
        if score is not None and score == float("-inf"):
            score = None
        yield Select(list(lines), score, reason)
        self.stats.wall_ms = (time.perf_counter() - self.t0) * 1e3
        yield Done(SearchResult(self.puzzle, self.method, list(lines), verdict, self.stats, dict(self.params), score))


def step_ok(state: list[int], line: str) -> tuple[bool, list[int]]:
    """Is ``line`` a legal, correct step on the available numbers? and the state after it."""
    from collections import Counter

    from ..countdown import apply_op

    step = parse_step(line)
    if step is None:
        return False, state
    avail = Counter(state)
    need = Counter((step.a, step.b))
    if any(avail[x] < need[x] for x in need) or apply_op(step.a, step.op, step.b) != step.result:
        return False, state
    rest = list((avail - need).elements()) + [step.result]
    return True, sorted(rest)
