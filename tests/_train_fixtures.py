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


def quick_countdown3(tmp_path_factory, name: str, train: int):
    """Like ``countdown3_data`` but written directly (no generator run: milliseconds instead of
    seconds): distinct solvable Countdown-3 puzzles, ``train`` of them in train.jsonl and 4 in
    each evaluation split, no puzzle in two splits."""
    import json
    import random

    from sbt_core.solver import is_solvable

    rng, seen, rows = random.Random(f"quick-{name}"), set(), []
    while len(rows) < train + 12:
        numbers = sorted(rng.randint(1, 20) for _ in range(3))
        target = rng.randint(10, 60)
        if (tuple(numbers), target) not in seen and is_solvable(tuple(numbers), target):
            seen.add((tuple(numbers), target))
            rows.append({"numbers": numbers, "target": target})
    d = tmp_path_factory.mktemp(name) / "countdown3"
    d.mkdir()
    splits = {"train": rows[:train], "val": rows[train:train + 4], "test_seen": rows[train + 4:train + 8],
              "test_new": rows[train + 8:]}
    for split, part in splits.items():
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return d
