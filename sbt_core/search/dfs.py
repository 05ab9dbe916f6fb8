"""Verifier-guided depth-first search over model steps (an ORACLE, the paper's DFS
baseline).

Each node is a state (the step lines so far). Expanding a node asks the model for ``n``
one-line continuations (``stop_at_line``); the verifier keeps the distinct lines that are
legal, correct steps on the numbers still available (markers and malformed lines are
dropped). Children are visited best mean log-prob first; a state with one number left is
a leaf (solved when it is the target; under rules "any" a step that makes the target
solves). ``nodes`` is the budget of expansions (model calls); a child that leads nowhere
is a dead end, reported as a ``Backtrack`` event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generator, Iterator

from ..countdown import Puzzle, is_finished, play_step
from .common import SearchRun
from .events import Backtrack, Event
from .params import TEMPERATURE_HELP, TOP_K_HELP, SearchParams, param


@dataclass(frozen=True)
class DfsParams(SearchParams):
    n: int = param(4, "one-line samples per expanded node")
    nodes: int = param(32, "node budget: expansions (model calls)")
    temperature: float = param(0.7, TEMPERATURE_HELP)
    top_k: int = param(0, TOP_K_HELP)
    max_new_tokens: int = param(24, "tokens one step sample may generate")


def run_dfs(puzzle: Puzzle, backend, params: DfsParams | dict | None = None, seed: int = 0) -> Iterator[Event]:
    p = DfsParams.coerce(params)
    run = SearchRun("dfs", puzzle, backend, p.record(), seed)
    found = yield from _visit(run, p, [], sorted(puzzle.numbers), depth=0)
    if found is None:
        deepest = run.attempt[1] if run.attempt else []
        why = f"no verified path within {run.stats.expansions} node(s); deepest path shown"
        yield from run.finish(deepest, None, why)
    else:
        yield from run.finish(found, None, "verifier-guided depth-first search (oracle)")


def _visit(run: SearchRun, p: DfsParams, prefix: list[str], state: list[int], depth: int,
           ) -> Generator[Event, None, list[str] | None]:
    if run.stats.expansions >= p.nodes:
        return None
    (e,) = yield from run.expand([prefix], p.n, depth, temperature=p.temperature,
                                 max_new_tokens=p.max_new_tokens, top_k=p.top_k, stop_at_line=True)
    children: dict[str, tuple[float, int, list[int], int]] = {}
    for i, c in enumerate(e.completions):
        line = c.text.strip()
        move = play_step(state, line)
        if move.ok and (line not in children or c.mean_logprob > children[line][0]):
            children[line] = (c.mean_logprob, children.get(line, (0, i))[1], list(move.state), move.step.result)
    run.note_attempt(prefix, "none", float(len(prefix)))
    for line, (_, index, after, made) in sorted(children.items(), key=lambda kv: -kv[1][0]):
        path = prefix + [line]
        run.note_attempt(path, "none", float(len(path)))
        if is_finished(run.puzzle, after, made):  # (rules "any": the target made, numbers may be left)
            yield run.add_candidate(path, children[line][0])
            return path
        if len(after) == 1:
            found = None
        else:
            found = yield from _visit(run, p, path, after, depth + 1)
            if found is not None:
                return found
        run.stats.backtracks += 1
        yield Backtrack(e.node, index, line, list(prefix), depth)
        if run.stats.expansions >= p.nodes:
            return None
    return None
