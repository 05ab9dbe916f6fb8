"""The settings of a training run (``TrainConfig``), checked when it is made: without torch,
so that ``sbt train`` refuses an impossible setting at once, before any model loads.

Which settings define the experiment (and so must not change on ``--resume``) and which may
change (``RESUMABLE``) is decided here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from sbt_core.errors import SbtError
from sbt_core.limits import (MAX_BACK_RATIO, MAX_BATCH_SIZE, MAX_BETA, MAX_EPOCHS, MAX_GROUP, MAX_LABEL_WEIGHT,
                             MAX_LR, MAX_PAIRS, MAX_PUZZLES, MAX_SEED, MAX_THREADS, MAX_TRAIN_TOKENS, check_range,
                             check_temperature)

from .data import Recipe
from .model import SIZES

PRECISIONS = ("auto", "fp32", "bf16", "bf16-master")  # see training/stepper.py
MAX_LORA_RANK = 1024
COMPILE = ("auto", "on", "off")

# the command-line option of each setting (for messages)
FLAGS = {"data_dir": "--data-dir", "data": "--data", "back_ratio": "--back-ratio", "kind_weights": "--kinds",
         "goal_forcing": "--goal-forcing", "own_errors": "--own-errors", "honest_last": "--honest-last",
         "size": "--size", "base_model": "--base-model", "train_puzzles": "--train-puzzles",
         "max_tokens": "--tokens", "batch_size": "--batch-size", "lr": "--lr", "seed": "--seed",
         "eval_every": "--eval-every", "eval_puzzles": "--eval-puzzles", "ckpt_every": "--ckpt-every",
         "precision": "--precision", "compile": "--compile", "threads": "--threads", "ema": "--ema",
         "paths_file": "--paths", "extra_puzzles": "--extra-puzzles", "preset": "--recipe", "lora": "--lora",
         "merge": "--merge", "objective": "--objective", "prefs_file": "--prefs", "beta": "--beta",
         "pairs": "--pairs", "desirable_weight": "--desirable-weight", "undesirable_weight": "--undesirable-weight",
         "epochs": "--epochs", "group": "--group", "temperature": "--temperature", "sft_weight": "--sft-weight"}
# settings that may differ between a run and its --resume: how long, how often to look, how
# many threads; everything else defines the experiment (and ``out`` is where the run lives now)
RESUMABLE = ("out", "max_tokens", "eval_every", "ckpt_every", "threads", "epochs")
# --objective: the masked-loss SFT; preference optimisation of a --base-model on --prefs (sbt
# harvest --labelled; training/preference.py); GRPO with the verifier's reward (training/grpo.py)
OBJECTIVES = ("sft", "dpo", "kto", "grpo")

# ``sbt train --recipe``: named data recipes. "paper" is the paper's data exactly: D_op +
# D_back 1:1, error kinds exploration:computational:rule 1:2:2, prompt and wrong step
# masked, solver paths only; nothing of sbt's own (no goal-forcing errors, no honest-last
# examples, no weight average, no --paths / --extra-puzzles). "sbt" is sbt's default data,
# which adds goal-forcing errors (half of the computational errors are a last step that
# claims the target with wrong arithmetic); its values are defaults the options may change.
RECIPES = {
    "sbt": {"back_ratio": 1.0, "kind_weights": (1.0, 2.0, 2.0), "goal_forcing": 0.5, "honest_last": 0.0, "ema": 0.0},
    "paper": {"back_ratio": 1.0, "kind_weights": (1.0, 2.0, 2.0), "goal_forcing": 0.0, "honest_last": 0.0, "ema": 0.0},
}
PAPER_EXCLUDES = ("paths_file", "extra_puzzles")  # not in the paper's data


def check_optimisation(tokens, lr, batch_size, threads, seed) -> None:
    """The options of a fine-tuning or training run that ``sbt train`` and ``sbt iterate``
    share, each inside its documented limit (``sbt_core.limits``)."""
    check_range(batch_size, "--batch-size", 1, MAX_BATCH_SIZE, integer=True)
    check_range(tokens, "--tokens", 1, MAX_TRAIN_TOKENS, integer=True)
    check_range(lr, "--lr", 0, MAX_LR, low_open=True)
    check_range(seed, "--seed", 0, MAX_SEED, integer=True)
    check_range(threads, "--threads", 0, MAX_THREADS, integer=True)


@dataclass
class TrainConfig:
    out: str
    data_dir: str
    data: str = "op+back"
    back_ratio: float = 1.0
    kind_weights: tuple = (1.0, 2.0, 2.0)
    goal_forcing: float = 0.5  # share of computational errors that fake the goal (training/data.py)
    own_errors: float = 1.0  # share of a paths file's own mistakes (sbt harvest --mistakes) trained on
    honest_last: float = 0.0  # share of paths that also get an honest-last example (training/data.py)
    size: str = "small"
    base_model: str | None = None
    train_puzzles: int | None = None
    max_tokens: int = 50_000_000  # training tokens (non-padding) to process
    batch_size: int = 256
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    weight_decay: float = 0.1
    seed: int = 0
    eval_every: int = 500
    eval_puzzles: int = 300
    ckpt_every: int = 200
    precision: str = "auto"  # auto | fp32 | bf16 (autocast) | bf16-master (see training/stepper.py)
    compile: str = "auto"  # auto | on | off: torch.compile the training step
    attn: str = "eager"
    threads: int = 0
    ema: float = 0.0  # decay of the weight average that is evaluated and saved (0: off; see training/ema.py)
    # a JSONL of {"numbers", "target", "steps": ["a op b = c", ...]}: train on these given
    # paths (e.g. verified search outputs: `sbt iterate`, `sbt train --paths`) instead of
    # solver paths; with data "op+back" the D_back examples are built on them too
    paths_file: str | None = None
    # a JSONL of puzzles ({"numbers", "target"}) whose solver paths are trained on too, on top
    # of train.jsonl or --paths (e.g. small-number puzzles: `sbt data generate --max-number 12`)
    extra_puzzles: str | None = None
    preset: str = "sbt"  # --recipe: "paper" fixes the recipe settings to RECIPES["paper"]
    # --lora R: train LoRA adapters of rank R on --base-model (0: train every weight); the
    # output is an adapter directory, or with --merge the merged model (training/base_model.py)
    lora: int = 0
    merge: bool = False
    # --objective dpo|kto|grpo (training/finetune.py): fine-tuning of --base-model on the
    # labelled samples of --prefs (dpo, kto) or on its own answers to train puzzles scored by
    # the verifier (grpo), for --epochs passes over its examples (not --tokens)
    objective: str = "sft"
    prefs_file: str | None = None
    beta: float = 0.1  # dpo, kto: the pull to the reference; grpo: the KL penalty (0: none)
    pairs: int = 1  # dpo: pairs per puzzle
    sft_weight: float = 0.0  # dpo: weight of the chosen answers' NLL added to the loss (RPO; 0: plain DPO)
    desirable_weight: float = 1.0  # kto
    undesirable_weight: float = 1.0  # kto
    epochs: float = 1.0
    group: int = 8  # grpo: answers per puzzle
    temperature: float = 1.0  # grpo: sampling temperature

    def __post_init__(self) -> None:
        self.kind_weights = tuple(self.kind_weights) if isinstance(self.kind_weights, (list, tuple)) else self.kind_weights
        self.check()

    def check(self) -> None:
        """``SbtError`` (one line naming the option) for a setting no run can use."""
        if self.preset not in RECIPES:
            raise SbtError(f"--recipe must be one of {', '.join(RECIPES)}, got {self.preset!r}")
        if self.preset == "paper":
            for name, value in RECIPES["paper"].items():
                if getattr(self, name) != value:
                    shown = ":".join(f"{x:g}" for x in value) if isinstance(value, tuple) else f"{value:g}"
                    raise SbtError(f"--recipe paper fixes {FLAGS[name]} {shown}; drop {FLAGS[name]} or use --recipe sbt")
            for name in PAPER_EXCLUDES:
                if getattr(self, name):
                    raise SbtError(f"--recipe paper trains on solver paths only; drop {FLAGS[name]} or use --recipe sbt")
        for name in ("out", "data_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise SbtError(f"{FLAGS.get(name, '--out')} must be a path, got {getattr(self, name)!r}")
        if not all(isinstance(getattr(self, n), str) for n in ("data", "size", "precision", "compile", "attn")):
            raise SbtError("--data, --size, --precision and --compile must be names")
        if self.size not in SIZES:
            raise SbtError(f"--size must be one of {', '.join(SIZES)}, got {self.size!r}")
        if self.precision not in PRECISIONS:
            raise SbtError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.compile not in COMPILE:
            raise SbtError(f"--compile must be one of {', '.join(COMPILE)}, got {self.compile!r}")
        check_optimisation(self.max_tokens, self.lr, self.batch_size, self.threads, self.seed)
        check_range(self.eval_puzzles, "--eval-puzzles", 1, MAX_PUZZLES, integer=True)
        if self.train_puzzles is not None:
            check_range(self.train_puzzles, "--train-puzzles", 1, MAX_PUZZLES, integer=True)
        for name in ("eval_every", "ckpt_every", "warmup_steps"):
            check_range(getattr(self, name), FLAGS.get(name, name), 1 if name != "warmup_steps" else 0, math.inf,
                        integer=True)
        check_range(self.back_ratio, "--back-ratio", 0, MAX_BACK_RATIO)
        for name in ("goal_forcing", "own_errors", "honest_last", "min_lr_ratio"):
            check_range(getattr(self, name), FLAGS.get(name, name), 0, 1)
        check_range(self.weight_decay, "weight_decay", 0, 1)
        ema_ok = isinstance(self.ema, (int, float)) and not isinstance(self.ema, bool) and (
            self.ema == 0 or 0 < self.ema < 1)  # (False for nan)
        if not ema_ok:
            raise SbtError(f"--ema must be 0 (off) or between 0 and 1, both excluded (e.g. 0.995), got {self.ema!r}")
        w = self.kind_weights
        if not (isinstance(w, tuple) and len(w) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                              and math.isfinite(x) and x >= 0 for x in w) and sum(w) > 0):
            raise SbtError(f"--kinds must look like 1:2:2 (three non-negative weights, not all 0), got {w!r}")
        check_range(self.lora, "--lora", 0, MAX_LORA_RANK, integer=True)
        if not isinstance(self.merge, bool):
            raise SbtError(f"--merge is a switch, got {self.merge!r}")
        if self.lora and not self.base_model:
            raise SbtError("--lora trains adapters on a --base-model; give one (or drop --lora)")
        if self.merge and not self.lora:
            raise SbtError("--merge merges LoRA adapters into the model; it needs --lora R")
        for name in ("base_model", "paths_file", "extra_puzzles"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise SbtError(f"{FLAGS[name]} must be a path, got {getattr(self, name)!r}")
        try:
            self.recipe()
        except ValueError as exc:
            raise SbtError(str(exc)) from None
        self.check_objective()

    def check_objective(self) -> None:
        if self.objective not in OBJECTIVES:
            raise SbtError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.objective == "sft":
            if self.prefs_file is not None:
                raise SbtError("--prefs is the data of --objective dpo or kto; drop it, or give --objective")
            return
        if not self.base_model:
            raise SbtError(f"--objective {self.objective} fine-tunes a trained model: give --base-model DIR "
                           "(e.g. models/countdown4-sft)")
        grpo = self.objective == "grpo"
        if grpo and self.prefs_file is not None:
            raise SbtError("--prefs is the data of dpo and kto; --objective grpo samples its own answers")
        if not grpo and (not isinstance(self.prefs_file, str) or not self.prefs_file):
            raise SbtError(f"--objective {self.objective} needs --prefs FILE (from `sbt harvest --labelled K`)")
        for name in ("lora", "paths_file", "extra_puzzles"):
            if getattr(self, name):
                raise SbtError(f"{FLAGS[name]} goes with --objective sft, not {self.objective}")
        if grpo:
            check_range(self.beta, "--beta", 0, MAX_BETA)
            check_range(self.group, "--group", 2, MAX_GROUP, integer=True)
            self.temperature = check_temperature(self.temperature, allow_zero=False)
        else:
            check_range(self.beta, "--beta", 0, MAX_BETA, low_open=True)
        check_range(self.pairs, "--pairs", 1, MAX_PAIRS, integer=True)
        check_range(self.sft_weight, "--sft-weight", 0, MAX_LABEL_WEIGHT)
        check_range(self.epochs, "--epochs", 0, MAX_EPOCHS, low_open=True)
        for name in ("desirable_weight", "undesirable_weight"):
            check_range(getattr(self, name), FLAGS[name], 0, MAX_LABEL_WEIGHT, low_open=True)

    def recipe(self) -> Recipe:
        return Recipe(self.data, self.back_ratio, tuple(self.kind_weights), self.goal_forcing, self.own_errors,
                      self.honest_last)

    @classmethod
    def from_saved(cls, saved: dict, where: str) -> "TrainConfig":
        """The config stored in a checkpoint (``where`` names it in errors)."""
        if not isinstance(saved, dict):
            raise SbtError(f"{where}: no training settings in it")
        saved = dict(saved)
        saved.setdefault("goal_forcing", 0.0)  # checkpoints from before the option: their data had none
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(saved) - known)
        if unknown:
            raise SbtError(f"{where}: unknown training settings {', '.join(map(str, unknown))} (made by another "
                           "version of sbt?)")
        try:
            return cls(**saved)
        except TypeError as exc:
            raise SbtError(f"{where}: incomplete training settings ({exc})") from None
        except SbtError as exc:
            raise SbtError(f"{where}: {exc}") from None
