"""Seeded Stream-of-Search style puzzle generator, held-out targets, splits, JSONL io.

A target is drawn first, then numbers are re-drawn until the solver finds a solution.
10% of the targets are held out (chosen by the seed) for the ``test_new`` split; every
other split uses the seen targets. No (multiset, target) appears in two splits, and each
split's stream depends only on (seed, split, its own index): asking for more training
puzzles never changes val or test, and a smaller train set is a prefix of a larger one.

A narrower number range (e.g. ``max_number=12``: the small-number puzzles users type, rare
when numbers are uniform on 1..99) makes an extra training set; ``avoid`` (another data
folder's eval puzzles) keeps it disjoint from that folder's val and test splits.

``rules="any"`` (TV Countdown: any subset of the numbers, ``countdown`` module doc) keeps a
draw when some of its numbers reach the target, and writes ``"rules": "any"`` in every row
and in meta.json (rules "all" write neither: their files are what they always were). The TV
game: ``sbt data generate --numbers 6 --rules any --min-target 100 --max-target 999``.

How numbers are drawn (``NUMBER_DISTS``): ``uniform`` on min..max (the paper's, the default),
or ``loguniform`` (P(k) proportional to 1/k: small numbers common, large ones still drawn);
on top of either, a share ``small_share`` P of the puzzles draws ALL its numbers uniformly
from min..``small_max`` (the small-number puzzles people type, e.g. the 24 game): exactly
floor(k * P) of a split's first k rows, from a stream of their own, the others being the rows
the split has without P, in their order. The share is one of whole puzzles, not of single
numbers: what a user types is a puzzle of small numbers, and a per-number law makes that
rarer with every extra number (log-uniform on 1..99 gives all four numbers <= 13 in 14% of
draws, all six in 5%). The default draws exactly what it always drew (the same random
stream) and writes the meta.json it always wrote. Both shape the train split only: val and
test are the paper's, byte for byte (``iter_split``), so a mixed training folder is evaluated
on the puzzles every other model is.

The 24 game is held out of training: no ``train`` puzzle has target 24 with every number
<= 13 (``hold_out_24``, on by default; those are the puzzles of ``game24_rows``, the
``data/countdown4/game24.jsonl`` test set). With seed 0 target 24 is a held-out target
anyway, so the shipped splits are unchanged by it.

``testset_rows`` makes one extra test file: every solvable puzzle of small ranges (the 24
game) or a seeded sample over all targets of a range (``data/countdown3/small12.jsonl``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import multiprocessing
import os
import random
import secrets
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .children import die_with_parent, signals_held
from .countdown import DEFAULT_RULES, Puzzle, check_rules
from .errors import SbtError
from .files import write_atomic
from .limits import MAX_GENERATE_DRAWS, MAX_GENERATE_WORKERS, MAX_NUMBER, MAX_SPLIT_PUZZLES, check_range
from .locks import output_lock
from .solver import _reach, _subsets, is_solvable

SPLITS = ("train", "val", "test_seen", "test_new")
EVAL_SPLITS = ("val", "test_seen", "test_new")
CHUNK = 2000
MAX_DRAWS = 2000  # number draws per target before giving it up (never reached with 1..99)
STALL_CHUNKS = 50  # chunks in a row without a new puzzle: the range is used up
PROGRESS_EVERY = 500  # rows between progress reports
NUMBER_DISTS = ("uniform", "loguniform")
DEFAULT_SMALL_MAX = 13
GAME24_TARGET, GAME24_MAX = 24, 13  # the 24 game: four numbers from 1..13, target 24
MAX_ENUMERATE = 2_000_000  # testset_rows(every=True): (number set, target) pairs checked at most


def split_flag(split: str) -> str:
    """The command-line option that sets a split's size (``test_seen`` -> ``--test-seen``)."""
    return "--" + split.replace("_", "-")


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
    rules: str = DEFAULT_RULES  # "all" | "any" (meta.json of "all" data keeps its keys and order)
    # how numbers are drawn (module doc); meta.json names them only when they are not the default
    number_dist: str = "uniform"
    small_share: float = 0.0
    small_max: int = DEFAULT_SMALL_MAX
    hold_out_24: bool = True  # no train puzzle is a 24-game puzzle (target 24, numbers <= 13)

    def __post_init__(self) -> None:
        check_rules(self.rules)
        if self.number_dist not in NUMBER_DISTS:
            raise SbtError(f"--number-dist must be one of {', '.join(NUMBER_DISTS)}, got {self.number_dist!r:.30}")
        check_range(self.small_share, "--small-share", 0, 1)
        if not isinstance(self.hold_out_24, bool):
            raise SbtError(f"hold_out_24 must be true or false, got {self.hold_out_24!r:.30}")
        if not 3 <= self.n_numbers <= 6:
            raise SbtError(f"--numbers must be between 3 and 6, got {self.n_numbers}")
        if self.min_number < 1:
            raise SbtError(f"--min-number must be at least 1, got {self.min_number}")
        for flag, value in (("--min-number", self.min_number), ("--max-number", self.max_number),
                            ("--min-target", self.min_target), ("--max-target", self.max_target)):
            if value > MAX_NUMBER:
                raise SbtError(f"{flag} must be at most {MAX_NUMBER:,} (the number limit), got {value:,}")
        if self.min_target < 0:
            raise SbtError(f"--min-target must be at least 0, got {self.min_target}")
        if self.min_number > self.max_number or self.min_target > self.max_target:
            raise SbtError("empty number or target range")
        if self.small_share > 0:
            check_range(self.small_max, "--small-max", self.min_number, self.max_number, integer=True)
        elif self.small_max != DEFAULT_SMALL_MAX:
            raise SbtError("--small-max needs --small-share (the share of puzzles drawn from "
                           f"{self.min_number}..--small-max)")
        if not 0 <= self.holdout_fraction < 1:
            raise SbtError(f"the held-out fraction must be in [0, 1), got {self.holdout_fraction}")
        for split, size in self.sizes.items():
            if split not in SPLITS:
                raise SbtError(f"unknown split {split!r} (the splits are {', '.join(SPLITS)})")
            check_range(size, split_flag(split), 0, MAX_SPLIT_PUZZLES, integer=True)

    def targets(self) -> tuple[list[int], list[int]]:
        """(seen, held-out) targets; the held-out ones are fixed by the seed."""
        all_targets = list(range(self.min_target, self.max_target + 1))
        k = round(self.holdout_fraction * len(all_targets))
        held = sorted(random.Random(f"holdout-{self.seed}").sample(all_targets, k))
        seen = [t for t in all_targets if t not in set(held)]
        return seen, held

    @property
    def default_draws(self) -> bool:
        """Numbers are drawn as they always were (uniform, no small share)."""
        return self.number_dist == "uniform" and self.small_share == 0

    def paper_draws(self) -> GeneratorConfig:
        """This config with the default number draws (uniform on min..max, no small share)."""
        if self.default_draws:
            return self
        return GeneratorConfig(**{**asdict(self), "number_dist": "uniform", "small_share": 0.0,
                                  "small_max": DEFAULT_SMALL_MAX})

    def held_out_of_train(self, numbers: Iterable[int], target: int) -> bool:
        """A 24-game puzzle that ``hold_out_24`` keeps out of the train split."""
        return self.hold_out_24 and target == GAME24_TARGET and max(numbers) <= GAME24_MAX


def _number_drawer(cfg: GeneratorConfig, rng: random.Random) -> Callable[[], tuple[int, ...]]:
    """One draw of ``cfg.n_numbers`` numbers from ``cfg.min_number..cfg.max_number`` by
    ``cfg.number_dist`` (uniform: ``randint`` per number, the stream the generator always drew)."""
    n, lo, hi = cfg.n_numbers, cfg.min_number, cfg.max_number
    if cfg.number_dist == "uniform":
        return lambda: tuple(rng.randint(lo, hi) for _ in range(n))
    values = range(lo, hi + 1)
    cum = list(itertools.accumulate(1 / k for k in values))  # P(k) ~ 1/k (IEEE sums: the same everywhere)
    return lambda: tuple(rng.choices(values, cum_weights=cum, k=n))


def _draw_chunk(args: tuple) -> list[tuple[tuple[int, ...], int]]:
    # chunk and max_draws travel with the task: spawned workers do not see a patched module
    cfg_dict, split, chunk_index, targets, chunk, max_draws = args
    cfg = GeneratorConfig(**cfg_dict)
    rng = random.Random(f"{cfg.seed}-{split}-{chunk_index}")
    draw = _number_drawer(cfg, rng)
    out = []
    for _ in range(chunk):
        target = rng.choice(targets)
        for _ in range(max_draws):
            numbers = draw()
            if is_solvable(numbers, target, cfg.rules):
                out.append((numbers, target))
                break
        # else: the target is out of reach of the number range (a narrow --max-number): no puzzle
    return out


# ---- worker processes: none outlives the command that started it (sbt_core.children) ----

def _stop_pool(pool: ProcessPoolExecutor, clean: bool) -> None:
    """Shut a pool down; unless ``clean`` (an error or a signal ended the split) its workers
    are terminated at once instead of finishing the chunks they hold."""
    if clean:
        pool.shutdown(wait=True)
        return
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        with contextlib.suppress(Exception):
            p.terminate()
    pool.shutdown(wait=False)  # the pool fails its pending futures itself (nobody waits for them)
    for p in procs:
        with contextlib.suppress(Exception):
            p.join(1.0)


def _chunks(cfg: GeneratorConfig, split: str, targets: list[int], workers: int) -> Iterator[list]:
    args = (asdict(cfg), split)
    task = (targets, CHUNK, MAX_DRAWS)
    if workers <= 1:
        i = 0
        while True:
            yield _draw_chunk((*args, i, *task))
            i += 1
    # spawn: a worker starts as a fresh interpreter and inherits no lock, no open output and
    # no thread state from the command (fork would copy the --out lock into every worker)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=die_with_parent, initargs=(os.getpid(),))
    clean = False
    try:
        i = 0
        while True:
            # submit, not map: an interrupted map cancels its futures, and a pool whose workers
            # are then terminated fails on the cancelled ones (a traceback from its thread)
            with signals_held():  # submit may start a worker: never interrupted half-way
                futures = [pool.submit(_draw_chunk, (*args, i + k, *task)) for k in range(workers * 4)]
            batch = [f.result() for f in futures]
            try:
                yield from batch
            except GeneratorExit:  # the split is complete: no task is in flight
                clean = True
                raise
            i += workers * 4
    finally:
        _stop_pool(pool, clean)


def iter_split(cfg: GeneratorConfig, split: str, taken: set, workers: int = 1,
               progress: Callable[[int], None] | None = None) -> Iterator[dict]:
    """The puzzles of one split, one row at a time, skipping any (multiset, target) already in
    ``taken`` (updated). Raises ``SbtError`` when the number and target ranges hold fewer
    distinct puzzles than asked for. The number distribution and the 24-game hold-out shape
    the train split only: val and test are the paper's whatever they say."""
    seen, held = cfg.targets()
    if split != "train":
        cfg = cfg.paper_draws()
    yield from _iter_rows(cfg, split, cfg.sizes.get(split, 0), held if split == "test_new" else seen,
                          taken, workers, progress, hold_out=split == "train")


def _iter_rows(cfg: GeneratorConfig, split: str, size: int, targets: list[int], taken: set, workers: int,
               progress: Callable[[int], None] | None, hold_out: bool) -> Iterator[dict]:
    """``size`` distinct rows drawn with ``targets`` from the stream named ``split`` (ids and
    ``split`` field too); ``hold_out``: skip what ``cfg.held_out_of_train`` names.

    With a ``small_share`` P, rows come from two streams: the first k rows hold exactly
    floor(k * P) from a second one, named ``<split>-small``, whose numbers are all drawn from
    min_number..small_max; the others are the rows the stream would give without P, in order."""
    if size <= 0:
        return
    share = Fraction(repr(cfg.small_share))  # 0.29 is 29/100: floor(k * share) has no rounding error
    main = _distinct(cfg, split, targets, taken, workers, hold_out)
    small = None
    if share:
        small_cfg = GeneratorConfig(**{**asdict(cfg), "max_number": cfg.small_max, "number_dist": "uniform",
                                       "small_share": 0.0, "small_max": DEFAULT_SMALL_MAX, "sizes": {}})
        small = _distinct(small_cfg, f"{split}-small", targets, taken, 1, hold_out)
    with contextlib.ExitStack() as stack:  # closing a stream stops its workers
        for stream in (main, small):
            if stream is not None:
                stack.enter_context(contextlib.closing(stream))
        for done in range(size):
            from_small = small is not None and math.floor((done + 1) * share) > math.floor(done * share)
            numbers, target = next((small if from_small else main), (None, None))
            if numbers is None:
                if from_small:
                    raise SbtError(f"{split}: only {math.floor(done * share):,} distinct solvable puzzles with "
                                   f"numbers {cfg.min_number}..{cfg.small_max} for --small-share "
                                   f"{cfg.small_share:g} (asked for {math.floor(size * share):,}); lower "
                                   "--small-share or raise --small-max")
                raise SbtError(f"{split}: only {done:,} distinct solvable puzzles with numbers "
                               f"{cfg.min_number}..{cfg.max_number} (asked for {size:,}); ask for fewer")
            row = {"id": f"{split}-{done:06d}", "split": split, "numbers": list(numbers), "target": target}
            if cfg.rules != DEFAULT_RULES:
                row["rules"] = cfg.rules
            yield row
            if progress and ((done + 1) % PROGRESS_EVERY == 0 or done + 1 == size):
                progress(done + 1)


def _distinct(cfg: GeneratorConfig, label: str, targets: list[int], taken: set, workers: int,
              hold_out: bool) -> Iterator[tuple[tuple[int, ...], int]]:
    """The (numbers, target) draws of the stream ``label`` that are not in ``taken`` (each
    added to it as it is handed out) nor held out of train; ends after STALL_CHUNKS chunks in
    a row without one (the range is used up)."""
    stalled = 0
    with contextlib.closing(_chunks(cfg, label, targets, workers)) as chunks:
        for chunk in chunks:
            fresh = False
            for numbers, target in chunk:
                key = (tuple(sorted(numbers)), target)
                if key in taken or (hold_out and cfg.held_out_of_train(numbers, target)):
                    continue
                taken.add(key)
                fresh = True
                yield numbers, target
            stalled = 0 if fresh else stalled + 1
            if stalled >= STALL_CHUNKS:
                return


def generate_split(cfg: GeneratorConfig, split: str, taken: set, workers: int = 1,
                   progress: Callable[[int], None] | None = None) -> list[dict]:
    """``iter_split`` as a list."""
    return list(iter_split(cfg, split, taken, workers, progress))


# ---- how many distinct puzzles the settings hold (refuse the impossible at once) ----

# per number count: the number sets counted one by one (more: sampled), about 0.3 s of solver
# work with numbers up to 99, and the most number sets a sample takes (about 1 s on the Xeon)
EXACT_MULTISETS = {3: 20_000, 4: 2_000, 5: 200, 6: 12}
PROBE_SAMPLES = {3: 40_000, 4: 8_000, 5: 1_000, 6: 100}
PROBE_DELTA = 1e-6  # a sampled upper bound is exceeded with at most this probability


def _reachable_count(numbers: tuple[int, ...], targets: frozenset, rules: str = DEFAULT_RULES) -> int:
    """How many of ``targets`` the sorted ``numbers`` reach (all of them, each once: the solver's
    rule, ``is_solvable``; rules "any": some sub-multiset of at least two of them, each
    number of it once). The full set of values of n > 3 numbers is not kept in the solver's
    cache (it is large and the generator never asks for it)."""
    values = _reach(numbers) if len(numbers) <= 3 else _reach.__wrapped__(numbers)
    if rules != DEFAULT_RULES:  # the proper sub-multisets' values are in the cache now (the splits of the whole)
        values = set(values)
        for sub in _subsets(numbers):
            if len(sub) < len(numbers):
                values |= _reach(sub)
    return len(targets & values) if len(values) > len(targets) else sum(v in targets for v in values)


def _orderings(m: tuple[int, ...]) -> int:
    """How many ordered draws give the sorted multiset ``m``."""
    out = math.factorial(len(m))
    for _, group in itertools.groupby(m):
        out //= math.factorial(len(list(group)))
    return out


def check_feasible(cfg: GeneratorConfig, taken: set | frozenset = frozenset(),
                   flags: dict[str, str] | None = None) -> None:
    """Refuse at once (``SbtError``) settings that cannot give the puzzles asked for
    (``taken``: puzzles that may not be drawn): the number and target ranges hold fewer
    distinct solvable puzzles, or random draws are so rarely solvable that drawing them would
    take more than MAX_GENERATE_DRAWS solver calls.

    val, test_seen and train share the seen targets, test_new has the held-out ones. Where
    there are few number sets every one is counted; else a seeded sample of number sets gives
    upper bounds that hold with probability 1 - PROBE_DELTA (Chernoff and empirical Bernstein),
    and settings under them pass: the generator's stall check is the last word on those.
    The draw cost is that of uniform draws. With a ``small_share`` the small-number range
    must hold that share of the train split too (else the share could not be kept: the
    small draws would be repeats). ``flags``: the option that names a split in a refusal."""
    if cfg.small_share > 0:
        small = GeneratorConfig(**{**asdict(cfg), "max_number": cfg.small_max, "small_share": 0.0,
                                   "small_max": DEFAULT_SMALL_MAX, "number_dist": "uniform",
                                   "sizes": {"train": math.floor(cfg.sizes.get("train", 0)
                                                                 * Fraction(repr(cfg.small_share)))}})
        check_feasible(small, taken, {"train": f"--small-share {cfg.small_share:g} of --train"})
    seen, held = cfg.targets()
    n, lo, hi = cfg.n_numbers, cfg.min_number, cfg.max_number
    span = hi - lo + 1
    multisets = math.comb(span - 1 + n, n)
    for splits, targets, kind in ((("val", "test_seen", "train"), seen, "seen"), (("test_new",), held, "held-out")):
        asked_splits = [s for s in splits if cfg.sizes.get(s, 0) > 0]
        asked = sum(cfg.sizes[s] for s in asked_splits)
        if not asked:
            continue
        tset = frozenset(targets)
        avoided = [k for k in taken if len(k[0]) == n and k[1] in tset and lo <= min(k[0]) and max(k[0]) <= hi]
        what = " + ".join((flags or {}).get(s) or split_flag(s) for s in asked_splits)
        where = f"numbers {lo}..{hi} and the {len(targets)} {kind} targets"
        note = f" outside the {len(avoided):,} of --avoid" if avoided else ""

        def refuse(count: str) -> None:
            raise SbtError(f"{what}: only {count} distinct solvable puzzles with {where}{note} "
                           f"(asked for {asked:,}); ask for fewer")

        def too_rare(p: float, p_upper: float, sample: str) -> None:
            # each puzzle takes 1/p draws on average, at least (more where targets differ)
            if p_upper > 0 and asked / p_upper <= MAX_GENERATE_DRAWS:
                return
            need = f"about {asked / p:,.0f}" if p > 0 else \
                f"more than {asked / p_upper:,.0f}" if p_upper > 0 else "endless"
            raise SbtError(f"{what}: random {where} are rarely solvable{sample}: {asked:,} puzzles need "
                           f"{need} solver calls (the limit is {MAX_GENERATE_DRAWS:,}); choose a narrower "
                           "--min-number..--max-number range or ask for fewer")

        if multisets <= EXACT_MULTISETS[n]:
            total = hits = 0  # hits: solvable (ordered draw, target) pairs, as the generator draws
            for m in itertools.combinations_with_replacement(range(lo, hi + 1), n):
                c = _reachable_count(m, tset, cfg.rules)
                total += c
                hits += c * _orderings(m)
            total -= sum(is_solvable(*k, cfg.rules) for k in avoided)
            if asked > total:
                refuse(f"{total:,}")
            p = hits / (span ** n * len(targets))
            too_rare(p, p, "")
            continue
        pairs = multisets * len(targets) - len(avoided)
        if asked > pairs:
            refuse(f"{pairs:,} or fewer")
        # draws: a number set comes with the chance of its orderings (weight, at most 1)
        weight_scale = math.factorial(n) * multisets / span ** n
        probe = _probe(cfg, tset, multisets, asked, len(avoided), weight_scale)
        if probe is None:
            continue
        k, (count_mean, count_upper), (draw_mean, draw_upper) = probe
        sample = f" (in a sample of {k:,} number sets)"
        scale = multisets * len(targets)
        upper = scale * count_upper - sum(is_solvable(*key, cfg.rules) for key in avoided)
        if asked > upper:
            refuse(f"about {max(int(scale * count_mean) - len(avoided), 0):,} (at most {max(int(upper), 0):,} "
                   f"by a sample of {k:,} number sets)")
        too_rare(draw_mean * weight_scale, min(1.0, draw_upper * weight_scale), sample)


def _probe(cfg: GeneratorConfig, targets: frozenset, multisets: int, asked: int, avoided: int,
           weight_scale: float):
    """A seeded sample of number sets drawn uniformly (stars and bars): per set, x = the share
    of ``targets`` it reaches and z = x times its share of the ordered draws (orderings / n!;
    ``weight_scale`` * mean z is the chance that a random draw is solvable). Returns (sample
    size, (mean x, upper x), (mean z, upper z)); None as soon as the sample plainly holds
    ``asked`` + ``avoided`` puzzles at a cost well inside MAX_GENERATE_DRAWS (the usual
    settings decide in milliseconds). Stops early too once a refusal is certain."""
    n, lo = cfg.n_numbers, cfg.min_number
    span = cfg.max_number - lo + n  # n distinct positions in 0..span-1 <-> one multiset
    rng = random.Random(f"probe-{n}-{lo}-{cfg.max_number}-{sorted(targets)}"
                        + ("" if cfg.rules == DEFAULT_RULES else f"-{cfg.rules}"))
    scale = multisets * len(targets)
    fact = math.factorial(n)
    k = 0
    sx = sxx = sz = szz = 0.0
    while k < PROBE_SAMPLES[n]:  # a count, never a time: the same answer on every machine and load
        pos = sorted(rng.sample(range(span), n))
        m = tuple(lo + p - i for i, p in enumerate(pos))
        x = _reachable_count(m, targets, cfg.rules) / len(targets)
        z = x * _orderings(m) / fact
        k += 1
        sx, sxx, sz, szz = sx + x, sxx + x * x, sz + z, szz + z * z
        if k % 16:
            continue
        if sz and scale * sx / k / 2 >= asked + avoided and asked * k / (sz * weight_scale) * 2 <= MAX_GENERATE_DRAWS:
            return None
        if k % 256 == 0:
            ux, uz = _mean_bounds(sx, sxx, k)[1], _mean_bounds(sz, szz, k)[1]
            if scale * ux < asked or asked > MAX_GENERATE_DRAWS * uz * weight_scale:
                break  # refused whatever the rest of the sample holds
    if k < 2:
        return None
    return k, _mean_bounds(sx, sxx, k), _mean_bounds(sz, szz, k)


def _mean_bounds(total: float, squares: float, k: int) -> tuple[float, float]:
    """(mean, upper bound) of i.i.d. values in [0, 1] from their sum and sum of squares: the
    smaller of the Chernoff (KL) and the empirical Bernstein bound, each at PROBE_DELTA / 2."""
    mean = total / k
    var = max(squares / k - mean * mean, 0.0) * k / (k - 1)
    log = math.log(4 / PROBE_DELTA)
    bernstein = mean + math.sqrt(2 * var * log / k) + 7 * log / (3 * (k - 1))
    return mean, min(1.0, bernstein, _kl_upper(mean, k, PROBE_DELTA / 2))


def _kl_upper(mean: float, k: int, delta: float) -> float:
    """The q >= mean with k * KL(mean || q) = log(1 / delta) (Chernoff-Hoeffding), by bisection."""
    bound = math.log(1 / delta) / k

    def kl(a: float, b: float) -> float:
        out = a * math.log(a / b) if a > 0 else 0.0
        return out + ((1 - a) * math.log((1 - a) / (1 - b)) if a < 1 else 0.0)

    low, high = mean, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        if mid >= 1 or kl(mean, mid) > bound:
            high = mid
        else:
            low = mid
    return high


def avoided_puzzles(cfg: GeneratorConfig, data_dir: Path) -> set:
    """The (multiset, target) keys of another data folder's eval splits, for ``generate(avoid=)``.
    Its held-out targets must be ours (same seed and target range), so that no test_new
    target can reach our train split. A puzzle FILE (``game24.jsonl``, ``small12.jsonl``: a
    test set of its own, with no held-out targets to agree on) gives the keys of its lines."""
    data_dir = Path(data_dir)
    if data_dir.is_file():
        puzzles = read_puzzles(data_dir)
        other = next((p.rules for p in puzzles if p.rules != cfg.rules), None)
        if other is not None:
            raise SbtError(f"--avoid {data_dir}: its puzzles are for rules {other!r}, these for {cfg.rules!r}")
        return {p.key for p in puzzles}
    try:
        meta = json.loads((data_dir / "meta.json").read_text())
    except (OSError, ValueError):
        raise SbtError(f"--avoid {data_dir}: no readable meta.json (not an `sbt data generate` folder, "
                       "nor a puzzle file)") from None
    if meta.get("rules", DEFAULT_RULES) != cfg.rules:
        raise SbtError(f"--avoid {data_dir}: its puzzles are for rules {meta.get('rules', DEFAULT_RULES)!r}, "
                       f"these for {cfg.rules!r}")
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


def _avoid_sources(cfg: GeneratorConfig, avoid) -> tuple[set, list[dict]]:
    """The keys to avoid and, per source, what meta.json says of it (``data_dir`` or ``file``
    and its number of puzzles)."""
    if avoid is None:
        return set(), []
    sources = [avoid] if isinstance(avoid, (str, os.PathLike)) else list(avoid)
    taken: set = set()
    record = []
    for src in sources:
        keys = avoided_puzzles(cfg, Path(src))
        taken |= keys
        record.append({"file" if Path(src).is_file() else "data_dir": str(src), "puzzles": len(keys)})
    return taken, record


def generate(cfg: GeneratorConfig, out_dir: Path, workers: int | None = None,
             progress: Callable[[str, int, int], None] | None = None,
             avoid=None, overwrite: bool = False) -> dict[str, int]:
    """Write every split as ``<split>.jsonl`` plus ``meta.json``; returns split sizes.
    With ``avoid`` (a data folder or puzzle file, or a list of them), none of their puzzles
    (a folder's eval puzzles) is drawn.

    Nothing the user owns is lost without their say: a folder that already holds a split
    file or meta.json is refused unless ``overwrite``; a split of size 0 never replaces an
    existing file (an empty one is left as it is, one with puzzles is refused even with
    ``overwrite``; where there is none, an empty file is written). Each split goes to a
    temporary file in ``out_dir``; all are renamed into place only when every split is
    complete, meta.json last, so a run killed half-way leaves the old files as they were.
    The folder's lock (``sbt_core.locks``) is held throughout: one writer per folder."""
    if workers is not None:
        check_range(workers, "--workers", 0, MAX_GENERATE_WORKERS, integer=True)
    if not any(cfg.sizes.get(s, 0) for s in SPLITS):
        raise SbtError("nothing to generate: every split has size 0")
    workers = workers or min(os.cpu_count() or 1, 4)
    out_dir = Path(out_dir)
    taken, avoided = _avoid_sources(cfg, avoid)
    check_feasible(cfg, taken)
    if out_dir.exists() and not out_dir.is_dir():
        raise SbtError(f"--out {out_dir} is a file, not a folder")
    existed = out_dir.exists()
    try:
        with output_lock(out_dir, is_dir=True, what="--out"):
            _check_out_dir(cfg, out_dir, overwrite)
            return _write_splits(cfg, out_dir, workers, progress, taken, avoided)
    except BaseException:
        if not existed:  # a folder this run created and left empty goes again
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise


def _check_out_dir(cfg: GeneratorConfig, out_dir: Path, overwrite: bool) -> None:
    names = [*(f"{s}.jsonl" for s in SPLITS), "meta.json"]
    present = [name for name in names if os.path.lexists(out_dir / name)]
    for name in present:
        if (out_dir / name).is_dir():
            raise SbtError(f"--out {out_dir}: {name} is a folder, not a file; move it away")
    if present and not overwrite:
        raise SbtError(f"--out {out_dir} already holds {', '.join(present)}; add --overwrite to replace "
                       "them, or choose another folder")
    for split in SPLITS:
        path = out_dir / f"{split}.jsonl"
        if cfg.sizes.get(split, 0) == 0 and path.is_file() and path.stat().st_size:
            lines = _count_lines(path)
            raise SbtError(f"{path} holds {lines:,} puzzles but {split_flag(split)} is 0; ask for that split "
                           f"({split_flag(split)} N) or move the file away (--overwrite never keeps a split of "
                           "an earlier run beside new ones, nor empties one)")
    _remove_stale_temps(out_dir)


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))


def _write_splits(cfg: GeneratorConfig, out_dir: Path, workers: int, progress, taken: set,
                  avoided: list[dict]) -> dict[str, int]:
    written: dict[str, int] = {}
    small = {"train": 0}  # train puzzles with every number <= small_max (eval splits: the paper's draws)

    def counted(split: str, rows: Iterator[dict]) -> Iterator[str]:
        for r in rows:
            small[split] = small.get(split, 0) + (max(r["numbers"]) <= cfg.small_max)
            yield _jsonl_line(r)
    temps: dict[Path, Path] = {}  # final path -> complete temporary file
    try:
        # eval splits first so that they never depend on the size of train
        for split in (*EVAL_SPLITS, "train"):
            size = cfg.sizes.get(split, 0)
            path = out_dir / f"{split}.jsonl"
            written[split] = 0
            if size <= 0:
                if not os.path.lexists(path):  # an existing (empty) file is left as it is
                    temps[path] = _write_temp(path, [])
                continue
            cb = (lambda n, s=split, z=size: progress(s, n, z)) if progress else None
            rows = iter_split(cfg, split, taken, workers if size >= 4 * CHUNK else 1, cb)
            with contextlib.closing(rows):
                temps[path] = _write_temp(path, counted(split, rows))
            written[split] = size
        seen, held = cfg.targets()
        config = asdict(cfg)
        if cfg.rules == DEFAULT_RULES:  # meta.json of "all" data: as it always was
            del config["rules"]
        if cfg.default_draws:
            for key in ("number_dist", "small_share", "small_max"):
                del config[key]
        if cfg.hold_out_24:
            del config["hold_out_24"]
        meta = {"generator": "sbt stream-of-search v1", **config, "seen_targets": seen,
                "held_out_targets": held, "written": written}
        if not cfg.default_draws:  # how many train puzzles came out small (every number <= small_max)
            meta["small_written"] = {"train": small["train"]}
        if avoided:  # one source: the dict it always was
            meta["avoided"] = avoided[0] if len(avoided) == 1 else avoided
        meta_tmp = _write_temp(out_dir / "meta.json", [json.dumps(meta, indent=1) + "\n"])
        temps[out_dir / "meta.json"] = meta_tmp
        with _signals_deferred():  # Ctrl-C / SIGTERM: all renamed or none
            for path, tmp in list(temps.items()):  # meta.json last (dicts keep their order)
                os.replace(tmp, path)
                del temps[path]
        _fsync_dir(out_dir)
    finally:
        for tmp in temps.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return written


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done (then reach the handlers in place)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not None:  # None: a handler Python cannot restore
            old[sig] = signal.signal(sig, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for sig in got:
            os.kill(os.getpid(), sig)


def _jsonl_line(row: dict) -> str:
    return json.dumps(row, separators=(", ", ": ")) + "\n"


TEMP_SUFFIX = ".tmp"


def _temp_name(path: Path) -> Path:
    """``.<name>.<pid>-<random>.tmp`` beside ``path`` (hidden; removed by the next run if a
    kill -9 left it)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")


def _write_temp(path: Path, chunks: Iterable[str]) -> Path:
    """``chunks`` written and synced to a new temporary file beside ``path``; returns it
    (removed again if writing fails or is interrupted)."""
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, "w", encoding="utf-8", newline="\n") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _remove_stale_temps(out_dir: Path) -> None:
    """Temporary files a killed run left (only ours: ``.<split>.jsonl.*.tmp``, ``.meta.json.*.tmp``);
    called with the folder's lock held, so no running generate owns them."""
    for name in [*(f"{s}.jsonl" for s in SPLITS), "meta.json"]:
        for tmp in out_dir.glob(f".{name}.*{TEMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---- one extra test file (the 24 game, small numbers): `sbt data testset` ----

def testset_rows(cfg: GeneratorConfig, name: str, count: int | None = None, workers: int = 1) -> list[dict]:
    """The rows of one test file named ``name`` (ids ``<name>-000000``, ``"split": name``), over
    EVERY target of ``cfg.min_target..cfg.max_target`` (no held-out targets: a test set of
    its own) and numbers in ``cfg.min_number..cfg.max_number``. ``count`` None: every
    solvable (number multiset, target), numbers ascending, sorted by target then numbers.
    Else ``count`` distinct solvable puzzles drawn as the generator draws them, from the
    stream named ``name`` of ``cfg.seed`` (a smaller count is a prefix of a larger one)."""
    cfg = GeneratorConfig(**{**asdict(cfg), "holdout_fraction": 0.0, "sizes": {}})
    targets = list(range(cfg.min_target, cfg.max_target + 1))
    if count is not None:
        check_range(count, "--count", 1, MAX_SPLIT_PUZZLES, integer=True)
        check_feasible(GeneratorConfig(**{**asdict(cfg), "sizes": {"val": count}}), flags={"val": "--count"})
        return list(_iter_rows(cfg, name, count, targets, set(), workers, None, hold_out=False))
    n, lo, hi = cfg.n_numbers, cfg.min_number, cfg.max_number
    pairs = math.comb(hi - lo + n, n) * len(targets)
    if pairs > MAX_ENUMERATE:
        raise SbtError(f"--all: {pairs:,} (number set, target) pairs to check, more than the {MAX_ENUMERATE:,} "
                       "this enumerates; narrow the number or target range, or sample with --count")
    rows = []
    for target in targets:
        for numbers in itertools.combinations_with_replacement(range(lo, hi + 1), n):
            if is_solvable(numbers, target, cfg.rules):
                row = {"id": f"{name}-{len(rows):06d}", "split": name, "numbers": list(numbers), "target": target}
                if cfg.rules != DEFAULT_RULES:
                    row["rules"] = cfg.rules
                rows.append(row)
    if len(rows) > MAX_SPLIT_PUZZLES:
        raise SbtError(f"--all: {len(rows):,} puzzles, more than {MAX_SPLIT_PUZZLES:,}; narrow the ranges")
    return rows


def game24_rows() -> list[dict]:
    """Every solvable 24-game puzzle (4 numbers from 1..13, target 24, each number used once:
    the rules "all"), as ``data/countdown4/game24.jsonl`` holds them."""
    cfg = GeneratorConfig(n_numbers=4, min_number=1, max_number=GAME24_MAX,
                          min_target=GAME24_TARGET, max_target=GAME24_TARGET, sizes={})
    return testset_rows(cfg, "game24")


def write_testset(path: Path | str, rows: list[dict], overwrite: bool = False) -> Path:
    """``rows`` as the JSONL file ``path`` (atomically, under the file's lock); an existing
    file is replaced only with ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise SbtError(f"--out {path} is a folder; name a .jsonl file")
    with output_lock(path, is_dir=False, what="--out"):
        if os.path.lexists(path) and not overwrite:
            raise SbtError(f"--out {path} already exists; add --overwrite to replace it, or choose another file")
        write_jsonl(path, rows)
    return path


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """``rows`` as JSONL at ``path``, atomically (``sbt_core.files.write_atomic``)."""
    write_atomic(path, "".join(_jsonl_line(r) for r in rows), what="file")


def read_puzzles(path: Path | str, limit: int | None = None, rules: str | None = None) -> list[Puzzle]:
    """Puzzles from a JSONL file (lines with ``numbers`` and ``target``, and ``rules`` where
    they are not "all"); clear errors on bad lines. ``rules``: the rules of lines that name
    none (default "all"); a line that names other rules is refused."""
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
                out.append(Puzzle.from_json(obj, rules))
            except SbtError as exc:
                raise SbtError(f"{path}:{lineno}: {exc}") from None
            if limit is not None and len(out) >= limit:
                break
    return out
