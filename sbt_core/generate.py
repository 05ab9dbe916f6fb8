"""Seeded Stream-of-Search style puzzle generator, held-out targets, splits, JSONL io.

A target is drawn first, then numbers are re-drawn until the solver finds a solution.
10% of the targets are held out (chosen by the seed) for the ``test_new`` split; every
other split uses the seen targets. No (multiset, target) appears in two splits, and each
split's stream depends only on (seed, split, its own index): asking for more training
puzzles never changes val or test, and a smaller train set is a prefix of a larger one.
"""

from __future__ import annotations

import json
import os
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .countdown import Puzzle
from .errors import SbtError
from .solver import is_solvable

SPLITS = ("train", "val", "test_seen", "test_new")
EVAL_SPLITS = ("val", "test_seen", "test_new")
CHUNK = 2000


@dataclass
class GeneratorConfig:
    n_numbers: int = 4
    seed: int = 0
    min_number: int = 1
    max_number: int = 99
    min_target: int = 10
    max_target: int = 100
    holdout_fraction: float = 0.10
    sizes: dict[str, int] = field(default_factory=lambda: {"train": 500_000, "val": 1_000, "test_seen": 5_000, "test_new": 5_000})

    def __post_init__(self) -> None:
        if not 3 <= self.n_numbers <= 6:
            raise SbtError(f"--numbers must be between 3 and 6, got {self.n_numbers}")
        if self.min_number > self.max_number or self.min_target > self.max_target:
            raise SbtError("empty number or target range")

    def targets(self) -> tuple[list[int], list[int]]:
        """(seen, held-out) targets; the held-out ones are fixed by the seed."""
        all_targets = list(range(self.min_target, self.max_target + 1))
        k = round(self.holdout_fraction * len(all_targets))
        held = sorted(random.Random(f"holdout-{self.seed}").sample(all_targets, k))
        seen = [t for t in all_targets if t not in set(held)]
        return seen, held


def _draw_chunk(args: tuple) -> list[tuple[tuple[int, ...], int]]:
    cfg_dict, split, chunk_index, targets = args
    cfg = GeneratorConfig(**cfg_dict)
    rng = random.Random(f"{cfg.seed}-{split}-{chunk_index}")
    out = []
    for _ in range(CHUNK):
        target = rng.choice(targets)
        while True:
            numbers = tuple(rng.randint(cfg.min_number, cfg.max_number) for _ in range(cfg.n_numbers))
            if is_solvable(numbers, target):
                break
        out.append((numbers, target))
    return out


def _chunks(cfg: GeneratorConfig, split: str, targets: list[int], workers: int) -> Iterator[list]:
    args = (asdict(cfg), split)
    if workers <= 1:
        i = 0
        while True:
            yield _draw_chunk((*args, i, targets))
            i += 1
    with ProcessPoolExecutor(workers) as pool:
        i = 0
        while True:
            batch = list(pool.map(_draw_chunk, [(*args, i + k, targets) for k in range(workers * 4)]))
            yield from batch
            i += workers * 4


def generate_split(cfg: GeneratorConfig, split: str, taken: set, workers: int = 1,
                   progress: Callable[[int], None] | None = None) -> list[dict]:
    """Puzzles of one split, skipping any (multiset, target) already in ``taken`` (updated)."""
    seen, held = cfg.targets()
    size = cfg.sizes.get(split, 0)
    out: list[dict] = []
    if size <= 0:
        return out
    for chunk in _chunks(cfg, split, held if split == "test_new" else seen, workers):
        for numbers, target in chunk:
            key = (tuple(sorted(numbers)), target)
            if key in taken:
                continue
            taken.add(key)
            out.append({"id": f"{split}-{len(out):06d}", "split": split, "numbers": list(numbers), "target": target})
            if len(out) == size:
                break
        if progress:
            progress(len(out))
        if len(out) == size:
            return out
    return out  # pragma: no cover


def generate(cfg: GeneratorConfig, out_dir: Path, workers: int | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> dict[str, int]:
    """Write every split as ``<split>.jsonl`` plus ``meta.json``; returns split sizes."""
    workers = workers or min(os.cpu_count() or 1, 4)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    taken: set = set()
    written = {}
    # eval splits first so that they never depend on the size of train
    for split in (*EVAL_SPLITS, "train"):
        size = cfg.sizes.get(split, 0)
        cb = (lambda n, s=split, z=size: progress(s, n, z)) if progress else None
        rows = generate_split(cfg, split, taken, workers if size >= 4 * CHUNK else 1, cb)
        write_jsonl(out_dir / f"{split}.jsonl", rows)
        written[split] = len(rows)
    seen, held = cfg.targets()
    meta = {"generator": "sbt stream-of-search v1", **asdict(cfg), "seen_targets": seen,
            "held_out_targets": held, "written": written}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return written


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(", ", ": ")) + "\n")
    os.replace(tmp, path)


def read_puzzles(path: Path | str, limit: int | None = None) -> list[Puzzle]:
    """Puzzles from a JSONL file (lines with ``numbers`` and ``target``); clear errors on bad lines."""
    path = Path(path)
    if not path.is_file():
        raise SbtError(f"puzzle file not found: {path}")
    out = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise SbtError(f"{path}:{lineno}: not valid JSON") from None
            except RecursionError:
                raise SbtError(f"{path}:{lineno}: JSON nested too deeply") from None
            try:
                out.append(Puzzle.from_json(obj))
            except SbtError as exc:
                raise SbtError(f"{path}:{lineno}: {exc}") from None
            if limit is not None and len(out) >= limit:
                break
    return out
