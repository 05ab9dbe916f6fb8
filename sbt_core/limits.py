"""Every documented limit of sbt in one place (the README's "Limits" section lists them).

A value outside its limit is refused with one line and exit 2 *before* any model loads or
any output is written. The numbers are chosen so that a run inside them fits a 24 GiB
machine with the shipped models; they are limits of the tool, not of the method.
"""

from __future__ import annotations

import math

from .errors import SbtError

# puzzles (sbt_core.countdown.parse_puzzle and Puzzle.from_json enforce these)
MIN_NUMBERS, MAX_NUMBERS = 2, 6          # numbers per typed puzzle
MAX_NUMBER = 1_000_000                    # largest input number or target
MAX_PUZZLE_TEXT = 200                     # characters of a typed puzzle

# search budgets (per puzzle); minimums are the smallest meaningful values
SEARCH_MINIMUM = {"n": 1, "b": 0, "width": 1, "nodes": 1, "temperature": 0.0, "top_k": 0,
                  "max_new_tokens": 1, "max_states": 0}
SEARCH_MAXIMUM = {"n": 1024, "b": 16, "width": 256, "nodes": 100_000, "temperature": 100.0,
                  "top_k": 100_000, "max_new_tokens": 1024, "max_states": 1_000_000}
# search parameters that take a name: the names they accept (the first is the default)
SEARCH_CHOICES = {"variant": ("all-states", "authors")}
# a positive temperature below this is refused: logits / T overflow (0 itself means greedy)
MIN_POSITIVE_TEMPERATURE = 0.01


def check_temperature(value: float, flag: str = "--temperature", allow_zero: bool = True) -> float:
    """``value`` as a float if it is a usable sampling temperature, else ``SbtError``:
    finite, 0 (greedy, where ``allow_zero``) or in [MIN_POSITIVE_TEMPERATURE, max]."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise SbtError(f"{flag} must be a number, got {value!r}") from None
    top = SEARCH_MAXIMUM["temperature"]
    low = f"0 or between {MIN_POSITIVE_TEMPERATURE} and {top:g}" if allow_zero else \
        f"between {MIN_POSITIVE_TEMPERATURE} and {top:g}"
    if not math.isfinite(t) or t < 0 or t > top or (t == 0 and not allow_zero) or 0 < t < MIN_POSITIVE_TEMPERATURE:
        raise SbtError(f"{flag} must be {low}, got {value!r}")
    return t

# self-backtracking: the samples of one round (its states x n) are one batched model call;
# a round that would need more than this expands only the states with the most backtracks
# (then the earliest), as ``max_states`` does: at most MAX_SAMPLES_PER_ROUND // n states
MAX_SAMPLES_PER_ROUND = 65_536

# training (sbt train; sbt iterate's fine-tuning) and harvesting
MAX_TRAIN_TOKENS = 10**11        # --tokens: training tokens of one run
MAX_BATCH_SIZE = 1024            # --batch-size (examples per step; 4x the default 256)
MAX_LR = 1.0                     # --lr: in (0, MAX_LR]
MAX_BACK_RATIO = 10.0            # --back-ratio: backtracking examples per solution path
MAX_THREADS = 1024               # --threads
MAX_PUZZLES = 10_000_000         # --puzzles, --train-puzzles, --eval-puzzles, --eval-limit
MAX_SEED = 2**32 - 1             # --seed of train, harvest and iterate: 0..MAX_SEED
MAX_ROUNDS = 100                 # sbt iterate --rounds
MAX_WORKERS = 64                 # sbt bench / sbt harvest --workers: 1..this local processes
MAX_EPOCHS = 100.0               # sbt train --epochs (dpo, kto): in (0, MAX_EPOCHS]
MAX_BETA = 100.0                 # sbt train --beta (dpo, kto): in (0, MAX_BETA]
MAX_PAIRS = 64                   # sbt train --pairs (dpo): pairs per puzzle, 1..this
MAX_LABEL_WEIGHT = 100.0         # sbt train --desirable-weight / --undesirable-weight (kto): in (0, this]
MAX_GROUP = 256                  # sbt train --group (grpo): answers sampled per puzzle, 2..this


def check_range(value, flag: str, low, high, *, integer: bool = False, low_open: bool = False) -> float | int:
    """``value`` if it is a finite number in [low, high] (``(low, high]`` with ``low_open``),
    else ``SbtError`` naming ``flag`` and the range."""
    try:
        ok = not isinstance(value, bool) and math.isfinite(value) and (value > low if low_open else value >= low) \
            and value <= high and (not integer or float(value).is_integer())
    except (TypeError, OverflowError):
        ok = False
    if not ok:
        fmt = (lambda x: f"{x:,}" if abs(x) >= 10_000 else f"{x}") if integer else (lambda x: f"{x:g}")
        span = f"above {fmt(low)} and at most {fmt(high)}" if low_open else f"between {fmt(low)} and {fmt(high)}"
        shown = repr(value) if len(repr(value)) <= 24 else repr(value)[:20] + "..."
        raise SbtError(f"{flag} must be {'a whole number ' if integer else ''}{span}, got {shown}")
    return value


# a model directory's config.json (sbt_core.models.check_config): every size (vocab, hidden,
# heads, intermediate, positions, head_dim) is a whole number in 1..MAX_MODEL_DIM, the layer
# count in 1..MAX_MODEL_LAYERS; the weight files' headers must then match it exactly
MAX_MODEL_DIM = 2**24
MAX_MODEL_LAYERS = 4096
# the llama backend's context per sequence: the GGUF's context length, at most this many
# tokens (a GGUF claiming a huge context allocates no huge KV cache)
LLAMA_MAX_CONTEXT = 4096

# sbt data generate: puzzles per split (--train, --val, --test-seen, --test-new: 0..this;
# 10x the default train set) and worker processes (--workers: 0..this, 0 = one per core, at most 4)
MAX_SPLIT_PUZZLES = 5_000_000
MAX_GENERATE_WORKERS = 64
# ... and solver calls one run may need (about 3 hours of one core; the default Countdown-4
# set needs about 4 million): a number range whose random draws are rarely solvable is refused
MAX_GENERATE_DRAWS = 100_000_000
