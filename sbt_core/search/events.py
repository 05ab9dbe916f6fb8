"""The search event stream: every consumer (CLI, TUI, harness) is a view of it.

A strategy is a generator of these events; the last one is always ``Done`` and carries
the ``SearchResult``. Events are plain dataclasses with ``to_json()`` so that traces can
be stored and replayed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from ..countdown import Puzzle, Verdict


@dataclass
class Stats:
    model_calls: int = 0
    tokens: int = 0
    backtracks: int = 0
    expansions: int = 0
    candidates: int = 0
    wall_ms: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Event:
    kind: ClassVar[str] = "event"

    def to_json(self) -> dict:
        return {"event": self.kind, **asdict(self)}


@dataclass
class Expand(Event):
    """The model is asked for ``n`` continuations of ``prefix`` (step lines) in ``round``."""

    kind: ClassVar[str] = "expand"
    node: int
    prefix: list[str]
    n: int
    round: int = 0


@dataclass
class Sample(Event):
    """One continuation of an expanded node: its text, steps, ending and mean log-prob."""

    kind: ClassVar[str] = "sample"
    node: int
    index: int
    text: str
    lines: list[str]
    ending: str  # "goal" | "backtrack" | "none"
    logprob: float
    tokens: int


@dataclass
class StepEvent(Event):
    """A step line produced inside a sample (for step-by-step animation)."""

    kind: ClassVar[str] = "step"
    node: int
    index: int
    line: str
    valid: bool


@dataclass
class Backtrack(Event):
    """A sample ended in <backtrack>: ``wrong`` is dropped and ``prefix`` is expanded again."""

    kind: ClassVar[str] = "backtrack"
    node: int
    index: int
    wrong: str
    prefix: list[str]
    round: int


@dataclass
class _Answer(Event):
    lines: list[str]
    score: float | None


@dataclass
class Candidate(_Answer):
    """A complete answer ending in Goal Reached!, with its score (mean token log-prob)."""

    kind: ClassVar[str] = "candidate"
    count: int = 1


@dataclass
class Select(_Answer):
    """The answer the search settles on (``score`` None: no candidate), and why."""

    kind: ClassVar[str] = "select"
    reason: str = ""


@dataclass
class SearchResult:
    puzzle: Puzzle
    method: str
    lines: list[str]
    verdict: Verdict
    stats: Stats
    params: dict[str, Any] = field(default_factory=dict)
    score: float | None = None

    @property
    def solved(self) -> bool:
        return self.verdict.ok

    def to_json(self) -> dict:
        from ..countdown import expression, parse_step

        steps = [parse_step(x) for x in self.lines]
        rules = {} if self.puzzle.uses_all else {"rules": self.puzzle.rules}  # "all": the JSON as it always was
        return {
            "puzzle": str(self.puzzle),
            "numbers": list(self.puzzle.numbers),
            "target": self.puzzle.target,
            **rules,
            "method": self.method,
            "params": self.params,
            "solved": self.solved,
            "steps": list(self.lines),
            "expression": expression(self.puzzle, steps) if self.solved else None,
            "failure": None if self.solved else str(self.verdict.failure),
            "verdict": self.verdict.describe(),
            "score": self.score,
            "stats": self.stats.to_json(),
        }


@dataclass
class Done(Event):
    kind: ClassVar[str] = "done"
    result: SearchResult

    def to_json(self) -> dict:
        return {"event": self.kind, "result": self.result.to_json()}


def event_from_json(obj: dict) -> Event:
    """Rebuild a stored event (for replay). ``done`` events come back as their JSON dict."""
    kinds = {cls.kind: cls for cls in (Expand, Sample, StepEvent, Backtrack, Candidate, Select)}
    obj = dict(obj)
    kind = obj.pop("event")
    if kind == "done":
        return Done(result=_result_from_json(obj["result"]))
    return kinds[kind](**obj)


def _result_from_json(obj: dict) -> SearchResult:
    from ..countdown import verify

    puzzle = Puzzle(tuple(obj["numbers"]), obj["target"], obj.get("rules") or "all")
    verdict = verify(puzzle, obj["steps"]) if obj["steps"] else Verdict(False, _failure(obj.get("failure")),
                                                                       rules=puzzle.rules)
    return SearchResult(puzzle, obj["method"], obj["steps"], verdict, Stats(**obj["stats"]), obj.get("params", {}), obj.get("score"))


def _failure(name):
    from ..countdown import Failure

    return Failure(name) if name else Failure.NO_ANSWER
