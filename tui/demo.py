"""A simulated self-backtracking search, for watching the TUI without a trained model.

It follows the shape of Algorithm 1 (expand N samples, roll back the ones that end in
``<backtrack>``, re-expand each distinct rolled-back state up to b rounds, select the
candidate with the best mean log-prob) but the "samples" are drawn with the exact solver
and a seeded RNG, not by a language model. It is labelled ``demo`` everywhere it is
shown, and it is what the TUI tests replay (deterministic, instant, no weights).
"""

from __future__ import annotations

import random
import time
from typing import Iterator

from sbt_core.countdown import Puzzle, apply_step, legal_steps, verify
from sbt_core.search.events import (
    Backtrack,
    Candidate,
    Done,
    Event,
    Expand,
    Sample,
    SearchResult,
    Select,
    Stats,
)
from sbt_core.solver import is_solvable, random_solution
from sbt_core.trace import BACKTRACK, GOAL

DEMO = "demo"


def _state(puzzle: Puzzle, lines: list[str]) -> tuple[int, ...]:
    from sbt_core.countdown import parse_step

    state = tuple(sorted(puzzle.numbers))
    for line in lines:
        state = apply_step(state, parse_step(line))
    return state


def _tokens(lines: list[str], ending: str) -> int:
    return sum(len(x) + 1 for x in lines) + (len(ending) if ending else 0)


def _continue(puzzle: Puzzle, prefix: list[str], rng: random.Random, p_good: float) -> tuple[list[str], str]:
    """A continuation of ``prefix``: a solution (goal), a dead end (backtrack) or a wrong 'goal'."""
    state = _state(puzzle, prefix)
    sub = Puzzle(state, puzzle.target)
    sol = random_solution(sub, rng) if len(state) > 1 else None
    roll = rng.random()
    if sol and roll < p_good:
        return [str(s) for s in sol], "goal"
    # walk a few good steps, then one step into a dead end
    good = [str(s) for s in (sol or [])]
    keep = rng.randint(0, max(0, len(good) - 2)) if good else 0
    lines = good[:keep]
    st = _state(puzzle, [*prefix, *lines])
    bad = [s for s in legal_steps(st) if not is_solvable(apply_step(st, s), puzzle.target)]
    if not bad:
        return ([str(s) for s in sol], "goal") if sol else ([], "none")
    wrong = rng.choice(bad)
    lines.append(str(wrong))
    if roll < p_good + 0.12 and len(st) == 2:  # a confident mistake: claims the goal anyway
        return lines, "goal"
    return lines, "backtrack"


def demo_events(puzzle: Puzzle, n: int = 4, b: int = 1, seed: int = 0, p_good: float = 0.3) -> Iterator[Event]:
    t0 = time.perf_counter()
    rng = random.Random(f"{puzzle}|{n}|{b}|{seed}")
    stats = Stats()
    node = 0
    frontier: list[list[str]] = [[]]
    cands: dict[tuple[str, ...], list] = {}
    for rnd in range(b + 1):
        rolled: list[list[str]] = []
        for prefix in frontier:
            yield Expand(node, list(prefix), n, rnd)
            stats.model_calls += 1
            stats.expansions += 1
            backs = []
            for i in range(n):
                lines, ending = _continue(puzzle, prefix, rng, p_good)
                marker = {"goal": GOAL, "backtrack": BACKTRACK}.get(ending, "")
                text = "".join(x + "\n" for x in lines) + marker
                tok = _tokens(lines, marker)
                lp = -round(rng.uniform(0.02, 0.6) + (0.25 if ending != "goal" else 0.0), 3)
                stats.tokens += tok
                yield Sample(node, i, text, lines, ending, lp, tok)
                full = [*prefix, *lines]
                if ending == "goal":
                    c = cands.setdefault(tuple(full), [lp, 0])
                    c[0] = max(c[0], lp)
                    c[1] += 1
                elif ending == "backtrack" and lines:
                    backs.append((i, lines[-1], [*prefix, *lines[:-1]]))
            for i, wrong, back in backs:
                stats.backtracks += 1
                yield Backtrack(node, i, wrong, back, rnd)
                if back not in rolled:
                    rolled.append(back)
            node += 1
        frontier = rolled[:3]  # a small re-expansion budget keeps the demo short
        if not frontier:
            break
    for lines, (score, count) in sorted(cands.items(), key=lambda kv: -kv[1][0]):
        yield Candidate(list(lines), score, count)
    stats.candidates = len(cands)
    if cands:
        best = max(cands.items(), key=lambda kv: kv[1][0])
        lines, score = list(best[0]), best[1][0]
        yield Select(lines, score, "highest mean log-prob")
    else:
        lines, score = [], None
        yield Select([], None, "no sample reached the goal")
    stats.wall_ms = (time.perf_counter() - t0) * 1e3
    yield Done(SearchResult(puzzle, DEMO, lines, verify(puzzle, lines), stats, {"n": n, "b": b}, score))
