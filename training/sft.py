"""Masked-loss supervised fine-tuning of a causal LM on Countdown traces.

Checkpoints every ``ckpt_every`` steps (model, optimizer, step) into ``out/checkpoint``
so a kill loses at most one interval; ``resume=True`` continues from it. The final
output is a standard Hugging Face model directory plus ``training.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from sbt_core.errors import SbtError
from sbt_core.generate import read_puzzles

from .batches import EncodedDataset, collate, iterate
from .data import Recipe, build_examples, encode, path_examples
from .ema import WeightAverage
from .evaluate import greedy_accuracy
from .model import new_model, save_model
from .stepper import Stepper, resolve_compile, resolve_precision


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

    def recipe(self) -> Recipe:
        return Recipe(self.data, self.back_ratio, tuple(self.kind_weights), self.goal_forcing, self.own_errors,
                      self.honest_last)


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    curve: list = field(default_factory=list)  # [{step, tokens, loss, val_acc, ...}]


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load_tokenizer_and_model(cfg: TrainConfig, device):
    from sbt_core.tokenizer import build_tokenizer
    from sbt_core.trace import BACKTRACK

    if cfg.base_model:
        from transformers import AutoTokenizer

        from sbt_core.backends.torch_backend import load_hf_model  # (no transformers progress bars in the log)

        base = Path(cfg.base_model)
        if not (base / "config.json").is_file():
            raise SbtError(f"--base-model {base}: not a Hugging Face model directory (no config.json)")
        try:
            model = load_hf_model(base, torch.float32)
            tok = AutoTokenizer.from_pretrained(base)
        except Exception as exc:  # corrupt or foreign checkpoint
            raise SbtError(f"--base-model {base}: cannot load ({type(exc).__name__}: {str(exc)[:120]})") from None
        if BACKTRACK not in tok.get_vocab():  # (a model of ours already has it: keep its tokenizer as it is)
            tok.add_special_tokens({"additional_special_tokens": [BACKTRACK]})
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if tok.bos_token is None:
            tok.bos_token = tok.eos_token
        model.resize_token_embeddings(len(tok))
    else:
        tok = build_tokenizer()
        model = new_model(tok, cfg.size, seed=cfg.seed)
    if cfg.attn and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(cfg.attn)
    return tok, model.to(device)


def _dataset(cfg: TrainConfig, tok, log) -> EncodedDataset:
    key = json.dumps([cfg.data_dir, cfg.train_puzzles, cfg.recipe().to_json(), cfg.seed, len(tok)], sort_keys=True)
    if cfg.paths_file:  # the given paths (and their content) instead of train.jsonl
        if not Path(cfg.paths_file).is_file():
            raise SbtError(f"paths file not found: {cfg.paths_file}")
        key += cfg.paths_file + hashlib.sha256(Path(cfg.paths_file).read_bytes()).hexdigest()
    if cfg.extra_puzzles:
        if not Path(cfg.extra_puzzles).is_file():
            raise SbtError(f"extra puzzles file not found: {cfg.extra_puzzles}")
        key += "extra" + cfg.extra_puzzles + hashlib.sha256(Path(cfg.extra_puzzles).read_bytes()).hexdigest()
    cache = Path(cfg.out) / "checkpoint" / f"dataset-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
    if cache.is_file():
        state = torch.load(cache)
        data = EncodedDataset.from_state(state)
        data.paths_info = state.get("paths_info")
        data.extra_info = state.get("extra_info")
        return data
    paths_info = None
    if cfg.paths_file:
        examples, dropped = path_examples(cfg.paths_file, cfg.train_puzzles, cfg.recipe(), cfg.seed)
        kept = sum(ex.kind == "op" for ex in examples)
        own = sum(ex.kind == "own-error" for ex in examples)
        log(f"{len(examples):,} examples ({cfg.data}) from {kept:,} paths in {cfg.paths_file}"
            + (f" and {own:,} of the model's own mistakes" if own else "") + f" ({dropped:,} dropped: not verified)")
        if not examples:
            raise SbtError(f"{cfg.paths_file}: no verified paths to train on ({dropped:,} dropped)")
        pairs = [encode(ex, tok) for ex in examples]
        paths_info = {"file": cfg.paths_file, "kept": kept, "dropped": dropped, "own_errors": own}
    else:
        train_file = Path(cfg.data_dir) / "train.jsonl"
        puzzles = read_puzzles(train_file, cfg.train_puzzles)
        log(f"building examples from {len(puzzles):,} puzzles ({cfg.data})")
        pairs = [encode(ex, tok) for ex in build_examples(puzzles, cfg.recipe(), cfg.seed)]
    extra_info = None
    if cfg.extra_puzzles:
        extra = read_puzzles(cfg.extra_puzzles)
        examples = list(build_examples(extra, cfg.recipe(), cfg.seed + 1))
        log(f"+ {len(examples):,} examples ({cfg.data}) from the solver paths of {len(extra):,} puzzles in {cfg.extra_puzzles}")
        pairs += [encode(ex, tok) for ex in examples]
        extra_info = {"file": cfg.extra_puzzles, "puzzles": len(extra), "examples": len(examples)}
    data = EncodedDataset(pairs)
    data.paths_info, data.extra_info = paths_info, extra_info
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**data.state(), "paths_info": paths_info, "extra_info": extra_info}, cache)
    return data


def lr_at(cfg: TrainConfig, step: int, total_steps: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def train(cfg: TrainConfig, resume: bool = False, log: Callable[[str], None] = print,
          on_step: Callable[[dict], None] | None = None) -> dict:
    """Train; returns the final ``training.json`` dict."""
    out = Path(cfg.out)
    ckpt = out / "checkpoint"
    if (ckpt / "state.pt").is_file() and not resume:
        raise SbtError(f"{out} already has a checkpoint; pass --resume to continue it or choose another --out")
    if resume and not (ckpt / "state.pt").is_file():
        raise SbtError(f"--resume: no checkpoint in {ckpt}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = _device()
    tok, model = _load_tokenizer_and_model(cfg, device)
    data = _dataset(cfg, tok, log)
    val = read_puzzles(Path(cfg.data_dir) / "val.jsonl", cfg.eval_puzzles)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98),
                            fused=device.type == "cuda")
    state = TrainState()
    saved = None
    if resume:
        saved = torch.load(ckpt / "state.pt", weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        state = TrainState(**saved["train_state"])
        log(f"resumed at step {state.step:,} ({state.tokens:,} tokens)")
    try:
        average = WeightAverage(model, cfg.ema) if cfg.ema else None
    except ValueError as exc:
        raise SbtError(str(exc)) from None
    if average and saved and saved.get("ema"):
        average.load_state_dict(saved["ema"])
    shipped = average.applied if average else contextlib.nullcontext
    avg_len = data.n_tokens / len(data)
    total_steps = max(1, int(cfg.max_tokens / (avg_len * cfg.batch_size)))
    try:
        precision = resolve_precision(cfg.precision, device, _cpu_has_bf16())
        compiled = resolve_compile(cfg.compile, device, total_steps - state.step)
    except ValueError as exc:
        raise SbtError(str(exc)) from None
    stepper = Stepper(model, opt, precision, compiled, log=log)
    log(f"precision {precision}, torch.compile {'on' if compiled else 'off'}, {torch.get_num_threads()} threads")
    model.train()
    t_start, tokens_window, t_window, loss_ema = time.time() - state.wall_s, 0, time.time(), None

    def checkpoint():
        state.wall_s = time.time() - t_start
        tmp = ckpt / "state.pt.tmp"
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "train_state": asdict(state), "config": asdict(cfg),
                    "ema": average.state_dict() if average else None}, tmp)
        os.replace(tmp, ckpt / "state.pt")

    def evaluate():
        with shipped():
            rep = greedy_accuracy(model, tok, val)
        point = {"step": state.step, "tokens": state.tokens, "wall_s": round(time.time() - t_start, 1),
                 "loss": round(loss_ema, 4) if loss_ema is not None else None, "val_greedy": rep.accuracy,
                 "val_ended_backtrack": rep.to_json()["ended_backtrack"]}
        state.curve.append(point)
        log(json.dumps(point))
        best_file = out / "best" / "best.json"
        best = json.loads(best_file.read_text())["val_greedy"] if best_file.is_file() else -1.0
        if rep.accuracy > best:  # keep the best-on-val model too (model selection on val only)
            with shipped():
                save_model(model, tok, out / "best")
            (out / "best" / "best.json").write_text(json.dumps(point) + "\n")

    for step, epoch, batch in iterate(data, cfg.batch_size, cfg.seed, state.step):
        if step >= total_steps:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step, total_steps)
        inputs = {k: v.to(device) for k, v in collate(data, batch, tok.pad_token_id, stepper.pad_multiple).items()}
        loss = stepper.step(inputs)
        if average:
            average.update()
        n_tok = int(inputs["attention_mask"].sum())
        state.step, state.tokens = step + 1, state.tokens + n_tok
        tokens_window += n_tok
        loss_ema = loss if loss_ema is None else 0.98 * loss_ema + 0.02 * loss
        if on_step:
            now = time.time()
            on_step({"step": state.step, "total": total_steps, "loss": loss_ema, "epoch": epoch,
                     "tokens_per_s": tokens_window / max(now - t_window, 1e-6)})
            if now - t_window > 30:
                tokens_window, t_window = 0, now
        if state.step % cfg.eval_every == 0:
            evaluate()
        if state.step % cfg.ckpt_every == 0:
            checkpoint()
    if not state.curve or state.curve[-1]["step"] != state.step:
        evaluate()
    checkpoint()
    with shipped():
        save_model(model, tok, out)
    report = {
        "command": os.environ.get("SBT_TRAIN_COMMAND", ""),
        "config": asdict(cfg),
        "data": {"train_file": cfg.paths_file or str(Path(cfg.data_dir) / "train.jsonl"), "examples": len(data),
                 "example_tokens": data.n_tokens, "recipe": cfg.recipe().to_json(),
                 "given_paths": data.paths_info, "extra_puzzles": data.extra_info},
        "params": sum(p.numel() for p in model.parameters()),
        "steps": state.step, "tokens": state.tokens, "wall_s": round(time.time() - t_start, 1),
        "hardware": _hardware(device), "precision": {"bf16": "bf16-autocast"}.get(precision, precision),
        "compiled": stepper.compiled,
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "curve": state.curve,
        "final": state.curve[-1] if state.curve else None,
    }
    (out / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _hardware(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
