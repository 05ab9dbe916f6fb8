"""How well a model's <backtrack> works as a learned verifier on its own greedy outputs.

A step is *wrong* when it is malformed, breaks a rule, has a wrong result, or leaves a
state from which the target can no longer be reached. Precision: of the outputs that end
in <backtrack>, the share whose last step was wrong. Recall: of the outputs that contain
a wrong step, the share that emitted <backtrack> right after the first one.
"""

from __future__ import annotations

from dataclasses import dataclass

from sbt_core.countdown import Puzzle, apply_step
from sbt_core.solver import is_solvable
from sbt_core.trace import Response


def first_wrong_step(puzzle: Puzzle, resp: Response) -> int | None:
    """Index of the first wrong step of a response, or None when every step is right."""
    state = tuple(sorted(puzzle.numbers))
    for i, step in enumerate(resp.steps):
        if step is None:
            return i
        try:
            state = apply_step(state, step)  # raises on unavailable numbers, bad results, illegal ops
        except ValueError:
            return i
        if not is_solvable(state, puzzle.target):
            return i
    return None


@dataclass
class VerifierStats:
    outputs: int = 0
    ended_backtrack: int = 0
    backtrack_after_wrong: int = 0
    with_wrong_step: int = 0
    caught: int = 0

    def add(self, puzzle: Puzzle, resp: Response) -> None:
        self.outputs += 1
        wrong = first_wrong_step(puzzle, resp)
        if resp.backtracked:
            self.ended_backtrack += 1
            if wrong is not None:  # once a step is wrong, every later state is a dead end too
                self.backtrack_after_wrong += 1
        if wrong is not None:
            self.with_wrong_step += 1
            if resp.backtracked and wrong == len(resp.steps) - 1:
                self.caught += 1

    @property
    def precision(self) -> float | None:
        return self.backtrack_after_wrong / self.ended_backtrack if self.ended_backtrack else None

    @property
    def recall(self) -> float | None:
        return self.caught / self.with_wrong_step if self.with_wrong_step else None

    def to_json(self) -> dict:
        return {"outputs": self.outputs, "ended_backtrack": self.ended_backtrack / max(self.outputs, 1),
                "precision": self.precision, "recall": self.recall}
