"""How well a model's <backtrack> works as a learned verifier on its own greedy outputs.

A step is *wrong* when it is malformed, breaks a rule, has a wrong result, or leaves a
state from which the target can no longer be reached. Precision: of the outputs that end
in <backtrack>, the share whose last step was wrong. Recall: of the outputs that contain
a wrong step, the share that emitted <backtrack> right after the first one
(``sbt_core.solver.first_wrong_step``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sbt_core.countdown import Puzzle
from sbt_core.solver import first_wrong_step
from sbt_core.trace import Response


@dataclass
class VerifierStats:
    outputs: int = 0
    ended_backtrack: int = 0
    backtrack_after_wrong: int = 0
    with_wrong_step: int = 0
    caught: int = 0

    def add(self, puzzle: Puzzle, resp: Response) -> None:
        self.outputs += 1
        wrong = first_wrong_step(puzzle, resp.steps)
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
