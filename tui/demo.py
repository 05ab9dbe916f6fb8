"""A simulated model for watching the TUI without a trained one.

The search is the real self-backtracking method (``sbt_core.search``, Algorithm 1); only
the model is simulated: ``DemoBackend`` is the scripted backend whose samples are drawn
with the exact solver and an RNG seeded by the call's seed and the state, not by a
language model. A sample is a solution (``Goal Reached!``), a few good steps and then a
step into a dead end (``<backtrack>``), or now and then a confident mistake that claims
the goal anyway. The run is labelled ``demo`` everywhere it is shown; it is
deterministic, instant and needs no weights.
"""

from __future__ import annotations

import random
from typing import Iterator

from sbt_core.backends.scripted import ScriptedBackend
from sbt_core.countdown import Puzzle, apply_step, legal_steps, state_after
from sbt_core.limits import SEARCH_MAXIMUM
from sbt_core.search.events import Event
from sbt_core.solver import is_solvable, random_solution
from sbt_core.trace import BACKTRACK, GOAL, parse_prompt

DEMO = "demo"
DEMO_STATES = 3  # rolled-back states re-expanded per round: keeps the demo short


def _continue(puzzle: Puzzle, prefix: list[str], rng: random.Random, p_good: float) -> tuple[list[str], str]:
    """A continuation of ``prefix``: a solution (goal), a dead end (backtrack) or a wrong 'goal'."""
    state = state_after(puzzle, prefix)
    if state is None:  # a prefix that breaks the rules: a model would give up
        return [], "backtrack"
    sub = Puzzle(state, puzzle.target, puzzle.rules)
    sol = random_solution(sub, rng) if len(state) > 1 else None
    roll = rng.random()
    if sol and roll < p_good:
        return [str(s) for s in sol], "goal"
    # walk a few good steps, then one step into a dead end
    good = [str(s) for s in (sol or [])]
    keep = rng.randint(0, max(0, len(good) - 2)) if good else 0
    lines = good[:keep]
    st = state_after(puzzle, [*prefix, *lines])
    bad = [s for s in legal_steps(st) if not is_solvable(apply_step(st, s), puzzle.target, puzzle.rules)]
    if not bad:
        return ([str(s) for s in sol], "goal") if sol else ([], "none")
    wrong = rng.choice(bad)
    lines.append(str(wrong))
    if roll < p_good + 0.12 and len(st) == 2:  # a confident mistake: claims the goal anyway
        return lines, "goal"
    return lines, "backtrack"


class DemoBackend(ScriptedBackend):
    """The scripted backend with a simulated model: each ``sample`` call draws ``n``
    continuations per state (``_continue``), from an RNG seeded by the call's seed and the
    state, each with a made-up mean log-prob (a wrong or unfinished sample scores lower)."""

    def __init__(self, p_good: float = 0.3) -> None:
        super().__init__(model_name=DEMO)
        self.p_good = p_good

    def sample(self, prompts: list[str], n: int, temperature: float, max_new_tokens: int,
               seed: int, top_k: int | None = None, stop_at_line: bool = False):
        self.calls.append(("sample", [self.state_of(p) for p in prompts], n))
        out = []
        for p in prompts:
            rng = random.Random(f"{p}|{seed}")
            puzzle, prefix = parse_prompt(p), [x for x in self.state_of(p).split("\n") if x]
            comps = []
            for _ in range(n):
                lines, ending = _continue(puzzle, prefix, rng, self.p_good)
                text = "".join(x + "\n" for x in lines) + {"goal": GOAL, "backtrack": BACKTRACK}.get(ending, "")
                lp = -round(rng.uniform(0.02, 0.6) + (0.25 if ending != "goal" else 0.0), 3)
                comps.append(self._truncate(self._completion((text, lp)), max_new_tokens, stop_at_line))
            out.append(comps)
        return out


def demo_events(puzzle: Puzzle, n: int = 4, b: int = 1, seed: int = 0, p_good: float = 0.3) -> Iterator[Event]:
    """The event stream of ``self-backtrack`` (N=``n``, b=``b``, at most ``DEMO_STATES``
    states a round) on the simulated model, its result labelled ``demo``."""
    from sbt_core.search.self_backtrack import SelfBacktrackParams, search

    p = SelfBacktrackParams.layered({"n": n, "b": b, "max_states": DEMO_STATES,
                                     "max_new_tokens": SEARCH_MAXIMUM["max_new_tokens"]})
    return search(puzzle, DemoBackend(p_good), p, seed, DEMO, p.record())
