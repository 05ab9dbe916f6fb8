"""Shared pieces of the tests that search train puzzles (``sbt iterate``, ``sbt harvest``)."""

from __future__ import annotations

from sbt_core.backends.scripted import solver_continuation
from sbt_core.countdown import Puzzle
from sbt_core.trace import render_solution


def half_right(puzzle: Puzzle, prefix: list) -> str:
    """A perfect model on even targets; on odd ones a wrong answer that claims the goal."""
    if puzzle.target % 2 == 0:
        return solver_continuation(puzzle, prefix)
    return render_solution([f"{puzzle.numbers[0]} + 1 = {puzzle.numbers[0] + 1}"])


def countdown3_data(tmp_path_factory, name: str, train: int):
    """A small generated Countdown-3 data folder (``train`` train puzzles, 4 per eval split)."""
    from sbt_core.generate import GeneratorConfig, generate

    d = tmp_path_factory.mktemp(name) / "countdown3"
    generate(GeneratorConfig(n_numbers=3, sizes={"train": train, "val": 4, "test_seen": 4, "test_new": 4}), d, workers=1)
    return d
