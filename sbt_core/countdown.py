"""Countdown: puzzles, steps, the Stream-of-Search rules and the strict verifier.

Rules (Stream of Search, which the paper follows): every number is used exactly once,
each step combines two available numbers with + - * / into one new number,
subtraction never goes negative, division must be exact (and never by zero), and the
last remaining number must equal the target.

A puzzle's ``rules`` say which numbers an answer must use: ``"all"`` (the default, the
paper's game above) or ``"any"`` (TV Countdown: the steps are the same, any subset of the
numbers may be used, and an answer is correct when its last step's result is the target;
numbers may stay unused). Under both rules an answer is a list of at least one step: a
puzzle whose target is one of its numbers is not solved by zero steps (``"any"`` needs a
step that makes the target, e.g. ``100 * 1 = 100`` or ``75 + 25 = 100``).
"""

from __future__ import annotations

import enum
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from .errors import PuzzleError
from .limits import MAX_NUMBER as MAX_VALUE
from .limits import MAX_NUMBERS, MAX_PUZZLE_TEXT, MIN_NUMBERS
OPS = ("+", "-", "*", "/")
SHOWN_TOKEN = 20  # characters of a user's token quoted in an error (longer: cut, with "…")
SHOWN_STEP = 40  # characters of a step line quoted in a verdict
RULES = ("all", "any")  # which numbers an answer must use: every one exactly once, or any of them at most once
DEFAULT_RULES = "all"
RULES_HELP = "all: every number used exactly once (the paper's rules); any: any subset (TV Countdown)"


def check_rules(rules, flag: str = "--rules") -> str:
    """``rules`` if it names a rule set (``RULES``), else ``PuzzleError`` naming ``flag``."""
    if not isinstance(rules, str) or rules not in RULES:
        raise PuzzleError(f"{flag} must be one of {', '.join(RULES)}, got {shorten(repr(rules), SHOWN_TOKEN)}")
    return rules


def shorten(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its start and "…" (``limit``
    characters in all), so that a reader sees it was cut."""
    text = str(text)
    return text if len(text) <= limit else text[:max(0, limit - 1)] + "…"


@dataclass(frozen=True, order=True)
class Puzzle:
    numbers: tuple[int, ...]
    target: int
    rules: str = DEFAULT_RULES  # "all" | "any" (module doc); "all" leaves every output as it was

    def __post_init__(self) -> None:
        object.__setattr__(self, "numbers", tuple(int(x) for x in self.numbers))
        object.__setattr__(self, "target", int(self.target))
        check_rules(self.rules, "rules")

    @property
    def uses_all(self) -> bool:
        """Every number must be used (rules "all")."""
        return self.rules == "all"

    @property
    def key(self) -> tuple[tuple[int, ...], int]:
        """Identity of the puzzle as a (sorted multiset, target) pair."""
        return tuple(sorted(self.numbers)), self.target

    def __str__(self) -> str:
        return f"{' '.join(map(str, self.numbers))} -> {self.target}"

    def to_json(self) -> dict:
        """``{"numbers", "target"}``, plus ``"rules"`` when they are not "all" (so that the
        JSON of an "all" puzzle is what it always was)."""
        out = {"numbers": list(self.numbers), "target": self.target}
        if self.rules != DEFAULT_RULES:
            out["rules"] = self.rules
        return out

    @classmethod
    def from_json(cls, obj: dict, rules: str | None = None) -> "Puzzle":
        """A puzzle object (``numbers``, ``target``, optionally ``rules``); ``rules``: the
        rules of an object that names none (default "all"). An object whose ``rules``
        differ from a given ``rules`` is refused."""
        def whole(x) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        # strict: 1.5, true, "12" or [[1]] must not be read silently as whole numbers
        if not (isinstance(obj, dict) and isinstance(obj.get("numbers"), list)
                and all(whole(x) for x in obj["numbers"]) and whole(obj.get("target"))):
            raise PuzzleError(f"not a puzzle object (needs 'numbers': a list of whole numbers and "
                              f"'target': a whole number): {obj!r:.80}")
        own = obj.get("rules")
        if own is not None:
            check_rules(own, "'rules'")
            if rules is not None and own != rules:
                raise PuzzleError(f"the puzzle says rules {own!r} but rules {rules!r} were asked for")
        puzzle = cls(tuple(obj["numbers"]), obj["target"], own or rules or DEFAULT_RULES)
        check_puzzle(puzzle)
        return puzzle


def check_puzzle(puzzle: Puzzle) -> Puzzle:
    """Raise PuzzleError unless the puzzle is within the supported bounds."""
    n = len(puzzle.numbers)
    if n < MIN_NUMBERS:
        raise PuzzleError(f"a puzzle needs at least {MIN_NUMBERS} numbers, got {n}")
    if n > MAX_NUMBERS:
        raise PuzzleError(f"a puzzle takes at most {MAX_NUMBERS} numbers, got {n}")
    for x in (*puzzle.numbers, puzzle.target):
        if x < 0:
            raise PuzzleError(f"numbers must be non-negative, got {x}")
        if x > MAX_VALUE:
            raise PuzzleError(f"numbers must be at most {MAX_VALUE:,}, got {x}")
    return puzzle


_ARROWS = ("->", "→", "=>")
_INT = re.compile(r"[+-]?\d+")


def parse_puzzle(text: str, rules: str = DEFAULT_RULES) -> Puzzle:
    """Read what a user types: ``2 3 5 -> 30``, ``2,3,5->30``, ``[2, 3, 5] -> 30``, ``2 3 5 → 30``;
    ``rules``: "all" or "any" (``sbt solve --rules``)."""
    check_rules(rules)
    if not isinstance(text, str):
        raise PuzzleError("a puzzle must be text")
    if len(text) > MAX_PUZZLE_TEXT:
        raise PuzzleError(f"puzzle text too long ({len(text):,} characters; at most {MAX_PUZZLE_TEXT})")
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf") and ch not in " \t":
            raise PuzzleError(f"puzzle contains a control character ({ch!r})")
    text = text.strip()
    if not text:
        raise PuzzleError('empty puzzle; write it like "2 3 5 -> 30"')
    arrows = sum(text.count(a) for a in _ARROWS)
    if arrows == 0:
        raise PuzzleError('no arrow between numbers and target; write it like "2 3 5 -> 30"')
    if arrows > 1:
        raise PuzzleError('more than one arrow; write it like "2 3 5 -> 30"')
    arrow = next(a for a in _ARROWS if a in text)
    left, right = (part.strip() for part in text.split(arrow))
    if left.startswith("[") and left.endswith("]"):
        left = left[1:-1]
    numbers = _read_ints(left, "numbers")
    if not right:
        raise PuzzleError("no target after the arrow")
    targets = _read_ints(right, "target")
    if len(targets) != 1:
        raise PuzzleError(f"expected one target after the arrow, got {right!r}")
    return check_puzzle(Puzzle(tuple(numbers), targets[0], rules))


def _read_ints(part: str, what: str) -> list[int]:
    tokens = [t for t in re.split(r"[\s,]+", part) if t]
    if not tokens:
        raise PuzzleError(f"no {what} given")
    values = []
    for tok in tokens:
        if not _INT.fullmatch(tok):
            raise PuzzleError(f"{shorten(tok, SHOWN_TOKEN)!r} is not a whole number (in the {what})")
        if len(tok.lstrip("+-").lstrip("0")) > 7:  # leading zeros are harmless: 0000005 is 5
            raise PuzzleError(f"numbers must be at most {MAX_VALUE:,}, got {shorten(tok, SHOWN_TOKEN)}")
        values.append(int(tok))
    return values


def apply_op(a: int, op: str, b: int) -> int | None:
    """The result of ``a op b`` under the rules, or None when the operation is illegal."""
    if op == "+":
        return a + b
    if op == "*":
        return a * b
    if op == "-":
        return a - b if a >= b else None
    if op == "/":
        if b == 0 or a % b:
            return None
        return a // b
    return None


@dataclass(frozen=True)
class Step:
    a: int
    op: str
    b: int
    result: int

    def __str__(self) -> str:
        return f"{self.a} {self.op} {self.b} = {self.result}"

    @property
    def is_legal(self) -> bool:
        return apply_op(self.a, self.op, self.b) is not None

    @property
    def is_correct(self) -> bool:
        return apply_op(self.a, self.op, self.b) == self.result


# 40 digits: 6 numbers of at most 10**6 never make a value above 10**36 (37 digits), so every
# legal step of an accepted puzzle can be written and read back. ASCII digits only (strict).
_STEP = re.compile(r"\s*(\d{1,40})\s*([-+*/])\s*(\d{1,40})\s*=\s*(-?\d{1,40})\s*", re.ASCII)


def parse_step(line: str) -> Step | None:
    """Parse ``a op b = c``; None for anything else. Never raises."""
    if not isinstance(line, str):
        return None
    m = _STEP.fullmatch(line)
    if not m:
        return None
    return Step(int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4)))


def legal_steps(state: Sequence[int]) -> list[Step]:
    """Every distinct legal step from a multiset of available numbers (larger operand first)."""
    out: list[Step] = []
    seen: set[tuple[int, str, int]] = set()
    s = sorted(state, reverse=True)
    for i in range(len(s)):
        for j in range(i + 1, len(s)):
            a, b = s[i], s[j]
            for op in OPS:
                r = apply_op(a, op, b)
                if r is None or (a, op, b) in seen:
                    continue
                seen.add((a, op, b))
                out.append(Step(a, op, b, r))
            if b != a:  # exact division of the smaller by the larger: only 0 / a
                r = apply_op(b, "/", a)
                if r is not None and (b, "/", a) not in seen:
                    seen.add((b, "/", a))
                    out.append(Step(b, "/", a, r))
    return out


class Failure(str, enum.Enum):
    """Why an answer is wrong: the paper's failure categories plus our stricter ones."""

    INVALID_FORMAT = "invalid_format"
    UNKNOWN_NUMBER = "unknown_number"
    INCORRECT_RESULT = "incorrect_result"
    ILLEGAL_OPERATION = "illegal_operation"
    UNUSED_NUMBERS = "unused_numbers"  # (rules "all" only)
    TARGET_NOT_REACHED = "target_not_reached"  # (the last step's result is not the target)
    NO_ANSWER = "no_answer"

    def __str__(self) -> str:
        return self.value


FAILURE_TEXT = {
    Failure.INVALID_FORMAT: "invalid step format",
    Failure.UNKNOWN_NUMBER: "unknown or already used number",
    Failure.INCORRECT_RESULT: "incorrect result in step",
    Failure.ILLEGAL_OPERATION: "illegal operation (negative, inexact or zero division)",
    Failure.UNUSED_NUMBERS: "not all numbers used",
    Failure.TARGET_NOT_REACHED: "target not reached",
    Failure.NO_ANSWER: "no answer",
}


@dataclass(frozen=True)
class Verdict:
    ok: bool
    failure: Failure | None = None
    step_index: int | None = None
    detail: str = ""
    rules: str = DEFAULT_RULES  # the rules it was judged by (how a verified answer is described)

    def __bool__(self) -> bool:
        return self.ok

    def describe(self) -> str:
        if self.ok:
            if self.rules != DEFAULT_RULES:
                return "verified: numbers used at most once, target reached"
            return "verified: every number used once, target reached"
        where = f" (step {self.step_index + 1})" if self.step_index is not None else ""
        return f"{FAILURE_TEXT[self.failure]}{where}: {self.detail}" if self.detail else FAILURE_TEXT[self.failure] + where


@dataclass(frozen=True)
class Move:
    """One step of an answer played on the numbers available: the parsed step (None when
    the line is not ``a op b = c``), the numbers available after it (sorted; the numbers
    before it when it is wrong) and, for a wrong step, why (a ``Failure`` and a detail)."""

    step: Step | None
    state: tuple[int, ...]
    failure: Failure | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.failure is None


def play_step(state: Sequence[int], raw: Step | str | None) -> Move:
    """Play one step (a ``Step`` or a line) on the available numbers ``state``."""
    step = raw if isinstance(raw, Step) else parse_step(raw)
    if step is None:
        return Move(None, tuple(sorted(state)), Failure.INVALID_FORMAT,
                    f"{shorten(raw, SHOWN_STEP)!r} is not 'a op b = c'")
    rest = list(state)
    why = _take(rest, step)
    if why is not None:
        return Move(step, tuple(sorted(state)), *why)
    return Move(step, tuple(sorted(rest)))


def _take(rest: list[int], step: Step) -> tuple[Failure, str] | None:
    """The rules of one step, in this order: the operands available (each number is used
    once), the operation legal, the result right. On success ``rest`` (the available
    numbers) loses the operands and gains the result, and the answer is None; else why not."""
    for x in (step.a, step.b):
        try:
            rest.remove(x)
        except ValueError:
            return Failure.UNKNOWN_NUMBER, f"{x} is not available"
    value = apply_op(step.a, step.op, step.b)
    if value is None:
        return Failure.ILLEGAL_OPERATION, f"{step.a} {step.op} {step.b} is not allowed"
    if value != step.result:
        return Failure.INCORRECT_RESULT, f"{step.a} {step.op} {step.b} is {value}, not {step.result}"
    rest.append(value)
    return None


def replay(puzzle: Puzzle, steps: Iterable[Step | str | None]) -> Iterator[Move]:
    """Play an answer's steps from the puzzle's numbers, one ``Move`` per step; stops after
    the first wrong step (its ``Move`` says why)."""
    state: tuple[int, ...] = tuple(sorted(puzzle.numbers))
    for raw in steps:
        move = play_step(state, raw)
        yield move
        if not move.ok:
            return
        state = move.state


def state_after(puzzle: Puzzle, steps: Iterable[Step | str | None]) -> tuple[int, ...] | None:
    """The numbers left after ``steps`` (sorted), or None when one of them is wrong."""
    state: tuple[int, ...] = tuple(sorted(puzzle.numbers))
    for move in replay(puzzle, steps):
        if not move.ok:
            return None
        state = move.state
    return state


def apply_step(state: Sequence[int], step: Step) -> tuple[int, ...]:
    """The state after a legal, correct step (sorted tuple). Raises ValueError otherwise."""
    rest = list(state)
    why = _take(rest, step)
    if why is not None:
        unknown = why[0] is Failure.UNKNOWN_NUMBER
        raise ValueError(f"{step}: " + (f"operand not available in {tuple(state)}" if unknown else "not a correct legal step"))
    return tuple(sorted(rest))


def verify(puzzle: Puzzle, steps: Iterable[Step | str | None]) -> Verdict:
    """Strictly judge an answer: legal exact steps on available numbers, the target reached
    by the last step, and (rules "all") every number used exactly once. Rules "any" take
    the same failure categories except ``UNUSED_NUMBERS``, and need at least one step."""
    state: tuple[int, ...] = tuple(sorted(puzzle.numbers))
    last: int | None = None
    rules = puzzle.rules
    for i, move in enumerate(replay(puzzle, steps)):
        if not move.ok:
            return Verdict(False, move.failure, i, move.detail, rules)
        state, last = move.state, move.step.result
    if last is None and (len(puzzle.numbers) > 1 or not puzzle.uses_all):
        return Verdict(False, Failure.NO_ANSWER, None, "no steps", rules)
    left = list(state)
    final = last if last is not None else left[0]
    if final != puzzle.target:
        return Verdict(False, Failure.TARGET_NOT_REACHED, None, f"ended at {final}, target {puzzle.target}", rules)
    if len(left) > 1 and puzzle.uses_all:
        return Verdict(False, Failure.UNUSED_NUMBERS, None, f"left unused: {left}", rules)
    return Verdict(True, rules=rules)


def is_finished(puzzle: Puzzle, state: Sequence[int], last: int | None) -> bool:
    """Whether an answer whose correct steps left ``state``, the last one making ``last``
    (None: no step yet, not an answer), is complete and right: the target made by the last
    step and (rules "all") one number left."""
    return last is not None and last == puzzle.target and (len(state) == 1 or not puzzle.uses_all)


def expression(puzzle: Puzzle, steps: Sequence[Step]) -> str:
    """The answer as one equation, e.g. ``(2 + 3) * 5 = 25``; best effort for unverified steps."""
    exprs: dict[int, list[str]] = {}
    for x in puzzle.numbers:
        exprs.setdefault(x, []).append(str(x))
    last = ""
    for step in steps:
        ea = exprs.get(step.a, []).pop() if exprs.get(step.a) else str(step.a)
        eb = exprs.get(step.b, []).pop() if exprs.get(step.b) else str(step.b)
        last = f"({ea} {step.op} {eb})"
        exprs.setdefault(step.result, []).append(last)
    if not last:
        return f"{puzzle.target}"
    return f"{last[1:-1]} = {steps[-1].result}"
