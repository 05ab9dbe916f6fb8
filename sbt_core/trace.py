"""The text protocol, and the only place that knows it (the paper's format exactly).

    ###Question: numbers [a, b, c, d]->target T
    ###Response:
    a op b = c            one step per line
    ...
    Goal Reached!         final line of a solution
    <backtrack>           final line after a wrong step (backtracking examples)

Under rules "any" (any subset of the numbers, ``countdown`` module doc) the question line
ends in `` (any)``: ``###Question: numbers [25, 50, 75, 100, 3, 6]->target 952 (any)``; the
question of a puzzle under rules "all" is the paper's, byte for byte.

Step lines end with a newline; the final marker line does not (the end-of-sequence
token follows it). A response prefix (a search state) is therefore always a run of
complete step lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from .countdown import DEFAULT_RULES, RULES, Puzzle, Step, parse_step, verify

GOAL = "Goal Reached!"
BACKTRACK = "<backtrack>"
PROMPT_HEAD = "###Question: numbers "
RESPONSE_HEAD = "###Response:\n"
# what the question line says after the target, per rule set ("all": nothing, the paper's prompt)
RULES_MARK = {"all": "", "any": " (any)"}


def prompt(puzzle: Puzzle) -> str:
    return (f"{PROMPT_HEAD}[{', '.join(map(str, puzzle.numbers))}]->target {puzzle.target}"
            f"{RULES_MARK[puzzle.rules]}\n{RESPONSE_HEAD}")


def render_steps(steps: Sequence[Step | str]) -> str:
    """Step lines, each ending in a newline: a response prefix."""
    return "".join(f"{s}\n" for s in steps)


def render_solution(steps: Sequence[Step | str]) -> str:
    return render_steps(steps) + GOAL


def render_backtrack(prefix: Sequence[Step | str], wrong: Step | str) -> str:
    return render_steps([*prefix, wrong]) + BACKTRACK


@dataclass
class Response:
    """A parsed model response. ``ending`` is "goal", "backtrack" or "none"."""

    lines: list[str] = field(default_factory=list)
    steps: list[Step | None] = field(default_factory=list)
    ending: str = "none"
    trailing: str = ""

    @property
    def reached_goal(self) -> bool:
        return self.ending == "goal"

    @property
    def backtracked(self) -> bool:
        return self.ending == "backtrack"

    @property
    def well_formed(self) -> bool:
        return all(s is not None for s in self.steps)


def parse_response(text: str) -> Response:
    """Parse a model's response (text after the prompt). Robust to garbage; never raises.

    Lines are read until the first ``Goal Reached!`` or ``<backtrack>``; anything after
    the marker is kept in ``trailing``. Lines that are not ``a op b = c`` become ``None``
    steps so that the verifier reports them as invalid format.
    """
    if not isinstance(text, str):
        text = str(text)
    out = Response()
    raw = text.split("\n")
    for idx, line in enumerate(raw):
        stripped = line.strip()
        if stripped in (GOAL, BACKTRACK):
            out.ending = "goal" if stripped == GOAL else "backtrack"
            out.trailing = "\n".join(raw[idx + 1 :])
            return out
        if not stripped:
            continue
        out.lines.append(stripped)
        out.steps.append(parse_step(stripped))
    return out


def parse_prompt(text: str) -> Puzzle | None:
    """Recover the puzzle from a prompt; None if it is not one. Never raises."""
    try:
        head, _, rest = text.partition(PROMPT_HEAD)
        nums, _, tail = rest.partition("]->target ")
        line = tail.split("\n", 1)[0]
        rules = next((r for r in RULES if RULES_MARK[r] and line.endswith(RULES_MARK[r])), DEFAULT_RULES)
        target = line[: len(line) - len(RULES_MARK[rules])]
        return Puzzle(tuple(int(x) for x in nums.lstrip("[").split(", ")), int(target), rules)
    except (ValueError, AttributeError, TypeError):
        return None


def is_verified(puzzle: Puzzle, text: str) -> bool:
    """A sampled answer (the model's text after the prompt) that the strict verifier
    accepts: it ends in ``Goal Reached!`` and its steps solve the puzzle (the model's claim
    alone never counts). The label of ``sbt harvest --labelled`` and GRPO's reward."""
    resp = parse_response(text)
    return resp.ending == "goal" and bool(resp.lines) and verify(puzzle, resp.lines).ok
