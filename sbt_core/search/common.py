"""Shared machinery of the model-based strategies: expansion with events, candidate
pooling with duplicate merging, best-attempt tracking and the final verified result.

Accounting (``Stats``): ``model_calls`` counts backend requests (one ``sample`` call for
a whole batch of states, one ``beam``, one ``score``); ``tokens`` counts generated tokens;
``expansions`` counts expanded states (nodes); ``backtracks`` counts samples that ended
in ``<backtrack>`` (dfs: dead ends left); ``candidates`` counts distinct answers ending
in ``Goal Reached!`` (dfs, pass@n: distinct verified answers).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Generator, Iterator, Sequence

from ..countdown import Failure, Puzzle, Verdict, shorten, verify
from ..errors import SbtError
from ..limits import SEARCH_CHOICES, SEARCH_MAXIMUM, SEARCH_MINIMUM, check_temperature
from ..trace import parse_response, prompt, render_steps
from .events import Candidate, Done, Event, Expand, Sample, SearchResult, Select, Stats, StepEvent

ENDING_RANK = {"goal": 2, "none": 1, "backtrack": 0}


def show_value(value: Any) -> str:
    """A value for an error line: short, never raising (a huge int, a long string)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > 64:  # str() of a huge int is slow, or raises past 4300 digits
            return f"about {'-' if value < 0 else ''}1e{round((abs(value).bit_length() - 1) * math.log10(2))}"
        return str(value)
    return shorten(repr(value), 40)


def check_param(key: str, value: Any, kind: type = int, label: str | None = None) -> Any:
    """``value`` as a ``kind`` (int or float) if it is a usable value of search parameter
    ``key``, else ``SbtError`` naming ``label`` (default ``parameter KEY``) and the limit.

    Numbers must be finite; whole-number parameters take only whole numbers (``8.0`` is
    8, ``2.5`` is refused); the bounds are ``sbt_core.limits.SEARCH_MINIMUM`` /
    ``SEARCH_MAXIMUM``; a named parameter takes one of ``SEARCH_CHOICES[key]``; the
    temperature goes through ``limits.check_temperature`` (0: greedy decoding, as every
    sampling backend treats it).
    """
    label = label or f"parameter {key}"
    if key in SEARCH_CHOICES:
        if value not in SEARCH_CHOICES[key]:
            raise SbtError(f"{label} must be one of {', '.join(SEARCH_CHOICES[key])}, got {show_value(value)}")
        return value
    what = "a whole number" if kind is int and key != "temperature" else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise SbtError(f"{label} must be {what}, got {show_value(value)}")
    low, high = SEARCH_MINIMUM.get(key), SEARCH_MAXIMUM.get(key)
    if isinstance(value, int) and value.bit_length() > 64:  # beyond every limit (and beyond a float)
        bound = f"at most {show_value(high)}" if value > 0 and high is not None else \
            f"at least {show_value(low)}" if value < 0 and low is not None else "a smaller number"
        raise SbtError(f"{label} must be {bound}, got {show_value(value)}")
    try:
        number = float(value.strip()) if isinstance(value, str) else value
    except ValueError:
        raise SbtError(f"{label} must be {what}, got {show_value(value)}") from None
    if key == "temperature":
        return check_temperature(number, label)
    if not math.isfinite(number) or (kind is int and number != int(number)):
        raise SbtError(f"{label} must be {what}, got {show_value(value)}")
    if low is not None and number < low:
        raise SbtError(f"{label} must be at least {show_value(low)}, got {show_value(value)}")
    if high is not None and number > high:
        raise SbtError(f"{label} must be at most {show_value(high)}, got {show_value(value)}")
    return kind(number)


def resolve_params(defaults: dict[str, Any], *layers: dict | None, names: Sequence[str | None] = (),
                   keep_numbers: bool = False) -> dict[str, Any]:
    """A method's parameters: its ``defaults`` overlaid by each layer in turn (e.g. the
    model's search defaults, then the user's choices); keys the method does not take and
    ``None`` values are skipped. The one place where search parameters are checked
    (``check_param``): every value of a layer whose key has a limit is checked, also one
    the method does not take (a value out of range is refused, not silently ignored).

    ``names[i]`` says where layer ``i`` came from, for the error line: a format string
    with ``{key}`` and ``{flag}`` (``top-k`` for ``top_k``), e.g. ``"--{flag}"`` or
    ``"--param {key}"``; default ``parameter {key}``. ``keep_numbers``: a valid int or
    float is kept as given (``1`` stays ``1`` for a float parameter), so that a run's
    recorded parameters, and with them a bench run's identity, do not change.
    """
    out = dict(defaults)
    for i, layer in enumerate(layers):
        name = (names[i] if i < len(names) else None) or "parameter {key}"
        for key, value in (layer or {}).items():
            if value is None or (key not in out and key not in SEARCH_MINIMUM and key not in SEARCH_CHOICES):
                continue
            kind = type(out[key]) if key in out and type(out[key]) in (int, float) else \
                type(SEARCH_MINIMUM.get(key, 0))
            checked = check_param(key, value, kind, name.format(key=key, flag=key.replace("_", "-")))
            if key in out:
                keep = keep_numbers and isinstance(value, (int, float)) and not isinstance(value, bool)
                out[key] = value if keep else checked
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
        self.sum_duplicates = False  # add a duplicate's score (the authors' variant) instead of keeping the best
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
        """Pool a complete answer; a duplicate keeps its best score and counts up (no penalty),
        or with ``sum_duplicates`` adds its score (mean log-probs are negative: a repeated
        answer scores lower)."""
        key = tuple(lines)
        got = self.candidates.get(key)
        if got is None:
            got = self.candidates[key] = Scored(list(lines), score, 1, len(self.candidates))
            self.stats.candidates += 1
        else:
            got.count += 1
            got.score = got.score + score if self.sum_duplicates else max(got.score, score)
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
