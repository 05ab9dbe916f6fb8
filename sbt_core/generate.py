"""Seeded Stream-of-Search style puzzle generator, held-out targets, splits, JSONL io.

A target is drawn first, then numbers are re-drawn until the solver finds a solution.
10% of the targets are held out (chosen by the seed) for the ``test_new`` split; every
other split uses the seen targets. No (multiset, target) appears in two splits, and each
split's stream depends only on (seed, split, its own index): asking for more training
puzzles never changes val or test, and a smaller train set is a prefix of a larger one.

A narrower number range (e.g. ``max_number=12``: the small-number puzzles users type, rare
when numbers are uniform on 1..99) makes an extra training set; ``avoid`` (another data
folder's eval puzzles) keeps it disjoint from that folder's val and test splits.
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
MAX_DRAWS = 2000  # number draws per target before giving it up (never reached with 1..99)
STALL_CHUNKS = 50  # chunks in a row without a new puzzle: the range is used up


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
        if self.min_number < 1:
            raise SbtError(f"--min-number must be at least 1, got {self.min_number}")
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
        for _ in range(MAX_DRAWS):
            numbers = tuple(rng.randint(cfg.min_number, cfg.max_number) for _ in range(cfg.n_numbers))
            if is_solvable(numbers, target):
                out.append((numbers, target))
                break
        # else: the target is out of reach of the number range (a narrow --max-number): no puzzle
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
    """Puzzles of one split, skipping any (multiset, target) already in ``taken`` (updated).
    Raises ``SbtError`` when the number and target ranges hold fewer distinct puzzles."""
    seen, held = cfg.targets()
    size = cfg.sizes.get(split, 0)
    out: list[dict] = []
    if size <= 0:
        return out
    stalled = 0
    for chunk in _chunks(cfg, split, held if split == "test_new" else seen, workers):
        before = len(out)
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
        stalled = 0 if len(out) > before else stalled + 1
        if stalled >= STALL_CHUNKS:
            raise SbtError(f"{split}: only {len(out):,} distinct solvable puzzles with numbers "
                           f"{cfg.min_number}..{cfg.max_number} (asked for {size:,}); ask for fewer")
    return out  # pragma: no cover


def avoided_puzzles(cfg: GeneratorConfig, data_dir: Path) -> set:
    """The (multiset, target) keys of another data folder's eval splits, for ``generate(avoid=)``.
    Its held-out targets must be ours (same seed and target range), so that no test_new
    target can reach our train split."""
    data_dir = Path(data_dir)
    try:
        meta = json.loads((data_dir / "meta.json").read_text())
    except (OSError, ValueError):
        raise SbtError(f"--avoid {data_dir}: no readable meta.json (not an `sbt data generate` folder)") from None
    if meta.get("held_out_targets") != cfg.targets()[1]:
        raise SbtError(f"--avoid {data_dir}: its held-out targets differ from these "
                       f"(use its --seed {meta.get('seed')} and target range)")
    return eval_puzzle_keys(data_dir)


def eval_puzzle_keys(data_dir: Path | str) -> set:
    """``Puzzle.key`` of every puzzle in a data folder's val / test_seen / test_new files
    (a missing file has none)."""
    keys: set = set()
    for split in EVAL_SPLITS:
        path = Path(data_dir) / f"{split}.jsonl"
        if path.is_file():
            keys.update(p.key for p in read_puzzles(path))
    return keys


def generate(cfg: GeneratorConfig, out_dir: Path, workers: int | None = None,
             progress: Callable[[str, int, int], None] | None = None,
             avoid: Path | None = None) -> dict[str, int]:
    """Write every split as ``<split>.jsonl`` plus ``meta.json``; returns split sizes.
    With ``avoid`` (a data folder), none of that folder's eval puzzles is drawn."""
    workers = workers or min(os.cpu_count() or 1, 4)
    out_dir = Path(out_dir)
    taken: set = avoided_puzzles(cfg, avoid) if avoid else set()
    avoided = len(taken)
    out_dir.mkdir(parents=True, exist_ok=True)
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
    if avoid:
        meta["avoided"] = {"data_dir": str(avoid), "puzzles": avoided}
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
