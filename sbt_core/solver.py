"""Exact Countdown solver: find a solution, prove there is none, count solutions, and
answer "is this state still solvable?" (memoised: data construction asks it millions
of times).

Under rules "any" (``countdown`` module doc) a state is solvable when some sub-multiset of
at least two of its numbers reaches the target using all of ITS numbers: the last step of
an answer is an expression over the numbers it used, and numbers it did not use (including
results of steps it never used again) do not matter. So every question under "any" is the
"all" question asked of sub-multisets, smallest first (a solution uses as few numbers as
possible).
"""

from __future__ import annotations

import itertools
import random
from functools import lru_cache
from typing import Iterable, Iterator, Sequence

from .countdown import DEFAULT_RULES, OPS, Puzzle, Step, apply_op, apply_step, check_rules, legal_steps, replay, verify


def _results(a: int, b: int) -> set[int]:
    out = set()
    hi, lo = (a, b) if a >= b else (b, a)
    for op in OPS:
        r = apply_op(hi, op, lo)
        if r is not None:
            out.add(r)
    if lo == 0 and hi != 0:
        out.add(0)  # 0 / hi
    return out


def _splits(state: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Distinct ways to cut a sorted multiset into two non-empty parts (unordered)."""
    n = len(state)
    out, seen = [], set()
    for mask in range(1, 1 << (n - 1)):  # element n-1 always on the right: no mirror duplicates
        left = tuple(state[i] for i in range(n) if mask >> i & 1)
        if left in seen:
            continue
        seen.add(left)
        out.append((left, tuple(state[i] for i in range(n) if not mask >> i & 1)))
    return out


@lru_cache(maxsize=1 << 18)
def _reach(state: tuple[int, ...]) -> frozenset[int]:
    """Every value an expression using ALL of these numbers (each once) can take."""
    if len(state) == 1:
        return frozenset(state)
    out: set[int] = set()
    for left, right in _splits(state):
        rb = _reach(right)
        for x in _reach(left):
            for y in rb:
                out |= _results(x, y)
    return frozenset(out)


def _partners(x: int, target: int) -> tuple[int, ...]:
    """The values y with op(x, y) == target for some legal op, in either operand order (x, target > 0)."""
    ys = [x + target, x * target]  # y - x, y / x
    if target >= x:
        ys.append(target - x)  # x + y
    if x >= target:
        ys.append(x - target)  # x - y
    if target % x == 0:
        ys.append(target // x)  # x * y
    if x % target == 0:
        ys.append(x // target)  # x / y
    return tuple(ys)


@lru_cache(maxsize=1 << 21)
def _solvable(state: tuple[int, ...], target: int) -> bool:
    if len(state) <= 3 or target == 0:
        return target in _reach(state)
    for left, right in _splits(state):
        ra, rb = _reach(left), _reach(right)
        if len(ra) > len(rb):
            ra, rb = rb, ra
        for x in ra:
            if x == 0:
                if any(target in _results(0, y) for y in rb):
                    return True
            elif any(y in rb for y in _partners(x, target)):
                return True
    return False


def _subsets(state: tuple[int, ...], smallest: int = 2) -> Iterator[tuple[int, ...]]:
    """The distinct sub-multisets of a sorted multiset with at least ``smallest`` numbers,
    smallest first (each sorted)."""
    for size in range(smallest, len(state) + 1):
        seen: set[tuple[int, ...]] = set()
        for sub in itertools.combinations(state, size):  # combinations of a sorted tuple stay sorted
            if sub not in seen:
                seen.add(sub)
                yield sub


@lru_cache(maxsize=1 << 16)
def _solvable_any(state: tuple[int, ...], target: int) -> tuple[int, ...] | None:
    """The smallest sub-multiset (at least two numbers) of ``state`` that reaches ``target``
    using all of its numbers, or None."""
    return next((sub for sub in _subsets(state) if _solvable(sub, target)), None)


def is_solvable(state: Sequence[int], target: int, rules: str = DEFAULT_RULES) -> bool:
    """True when the available numbers can still reach the target: using all of them
    (rules "all"), or with at least one more step on any of them (rules "any")."""
    key = tuple(sorted(state))
    if rules == "all":
        return _solvable(key, target)
    check_rules(rules, "rules")
    return _solvable_any(key, target) is not None


def solve(puzzle: Puzzle) -> list[Step] | None:
    """One solution (steps in order), or None when the puzzle has none. Under rules "any",
    one that uses as few numbers as possible."""
    state = tuple(sorted(puzzle.numbers))
    if not puzzle.uses_all:
        sub = _solvable_any(state, puzzle.target)
        return None if sub is None else _search(sub, puzzle.target, None)
    return _search(state, puzzle.target, None)


def random_solution(puzzle: Puzzle, rng: random.Random) -> list[Step] | None:
    """A solution drawn by a random walk over solvable states (varies solution and step order);
    under rules "any", on a sub-multiset drawn at random among those that reach the target."""
    state = tuple(sorted(puzzle.numbers))
    if not puzzle.uses_all:
        subs = list(_subsets(state))
        rng.shuffle(subs)
        sub = next((s for s in subs if _solvable(s, puzzle.target)), None)
        return None if sub is None else _search(sub, puzzle.target, rng)
    return _search(state, puzzle.target, rng)


def _search(state: tuple[int, ...], target: int, rng: random.Random | None) -> list[Step] | None:
    if not _solvable(state, target):
        return None
    path: list[Step] = []
    while len(state) > 1:
        moves = legal_steps(state)
        if rng is not None:
            rng.shuffle(moves)
        for step in moves:
            nxt = apply_step(state, step)
            if _solvable(nxt, target):
                path.append(step)
                state = nxt
                break
        else:  # pragma: no cover - _solvable guarantees a move
            raise AssertionError("solvable state without a solvable move")
    return path


def iter_solutions(puzzle: Puzzle) -> Iterator[list[Step]]:
    """Every distinct solution path (distinct sequences of steps, larger operand first).
    Under rules "any": the solutions (rules "all") of every sub-multiset of at least two
    numbers, smallest first: every step of such a path is used by the last one (answers
    with extra steps whose results stay unused are correct too, but not counted)."""
    if not puzzle.uses_all:
        for sub in _subsets(tuple(sorted(puzzle.numbers))):
            yield from iter_solutions(Puzzle(sub, puzzle.target))
        return

    def rec(state: tuple[int, ...], path: list[Step]) -> Iterator[list[Step]]:
        if len(state) == 1:
            if state[0] == puzzle.target:
                yield list(path)
            return
        if not _solvable(state, puzzle.target):
            return
        for step in legal_steps(state):
            path.append(step)
            yield from rec(apply_step(state, step), path)
            path.pop()

    yield from rec(tuple(sorted(puzzle.numbers)), [])


def count_solutions(puzzle: Puzzle) -> int:
    """How many paths ``iter_solutions`` gives, without listing them."""
    if not puzzle.uses_all:
        return sum(count_solutions(Puzzle(sub, puzzle.target)) for sub in _subsets(tuple(sorted(puzzle.numbers))))

    @lru_cache(maxsize=None)
    def count(state: tuple[int, ...]) -> int:
        if len(state) == 1:
            return int(state[0] == puzzle.target)
        if not _solvable(state, puzzle.target):
            return 0
        return sum(count(apply_step(state, s)) for s in legal_steps(state))

    return count(tuple(sorted(puzzle.numbers)))


def clear_cache() -> None:
    _solvable_any.cache_clear()
    _solvable.cache_clear()
    _reach.cache_clear()


def first_wrong_step(puzzle: Puzzle, steps: Iterable[Step | str | None]) -> int | None:
    """Index of the first step of an answer that is wrong: not a step, not allowed by the
    rules (unavailable number, illegal operation), wrong arithmetic (``countdown.replay``),
    or a correct step into a state from which the target can no longer be reached (under
    rules "any": a step that makes the target is never wrong, the answer may stop there).
    None when no step is wrong (the answer verifies, or it stops early or claims the goal
    without a wrong step)."""
    for i, move in enumerate(replay(puzzle, steps)):
        if not move.ok:
            return i
        if not puzzle.uses_all and move.step.result == puzzle.target:
            continue
        if not is_solvable(move.state, puzzle.target, puzzle.rules):
            return i
    return None


def false_claim_cut(puzzle: Puzzle, steps: Sequence[Step | None]) -> int | None:
    """Where an answer that falsely claims the goal went wrong in a way it can see: its first
    step that breaks a rule or the arithmetic, as the strict verifier reports it (the usual
    false claim: correct steps into a dead end, then a last step that writes the target as
    a wrong result), else, for correct steps that never reach the target, the first step
    into a dead end. None for an answer that verifies."""
    wrong = verify(puzzle, steps).step_index
    return first_wrong_step(puzzle, steps) if wrong is None else wrong
