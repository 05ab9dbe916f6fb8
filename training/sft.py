"""Masked-loss supervised fine-tuning of a causal LM on Countdown traces.

Checkpoints every ``ckpt_every`` steps (model, optimizer, EMA, step) into ``out/checkpoint``
as safetensors + JSON (``training/checkpoint.py``: data only, never a pickle) so a kill
loses at most one interval; ``resume=True`` continues from it. The run holds the lock of
``out`` (``sbt_core.locks``) from start to end: a second writer is refused. The final
output is a standard Hugging Face model directory plus ``training.json`` (with ``--lora``:
an adapter directory, or the merged model with ``--merge``; ``training/base_model.py``).

Under ``torchrun --nproc_per_node K`` the run is data-parallel (``training/distributed.py``):
each rank trains on its slice of every global batch, DDP averages the gradients, and rank 0
alone holds the lock, builds the data set cache, evaluates and writes; the result is the
run one process would make at the same ``--batch-size`` (up to float rounding), and its
checkpoint resumes with any number of processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from sbt_core.errors import SbtError
from sbt_core.files import write_json
from sbt_core.generate import read_puzzles
from sbt_core.locks import output_lock

from . import checkpoint as ckpt_io
from . import distributed
from .base_model import save_trained
from .batches import EncodedDataset, collate, iterate, trained_counts
from .config import TrainConfig
from .data import build_examples, encode, path_examples
from .ema import WeightAverage
from .evaluate import greedy_accuracy
from .model import new_model
from .stepper import Stepper, resolve_compile, resolve_precision

__all__ = ["TrainConfig", "TrainState", "train", "lr_at"]


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    curve: list = field(default_factory=list)  # [{step, tokens, loss, val_acc, ...}]
    generated_tokens: int = 0  # tokens sampled for training (GRPO's rollouts; training/finetune.py)


def _load_tokenizer_and_model(cfg: TrainConfig, device, log: Callable[[str], None] = print):
    """(tokenizer, model, base info): sbt's tokenizer and a new model of ``cfg.size``, or
    with ``cfg.base_model`` any local Hugging Face causal LM and its own tokenizer
    (``training.base_model.load_base``: ``<backtrack>`` added, ``--lora`` adapters); base
    info is what training.json records of the base (None from scratch)."""
    from sbt_core.tokenizer import build_tokenizer

    info = None
    if cfg.base_model:
        from .base_model import load_base

        tok, model, info = load_base(cfg, log)
    else:
        tok = build_tokenizer(_rules(cfg.data_dir))  # (rules "any": one more token, " (any)")
        model = new_model(tok, cfg.size, seed=cfg.seed)
        if cfg.attn and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(cfg.attn)
    return tok, model.to(device), info


def _dataset(cfg: TrainConfig, tok, log, save: bool = True) -> EncodedDataset:
    key = json.dumps([cfg.data_dir, cfg.train_puzzles, cfg.recipe().to_json(), cfg.seed, len(tok)], sort_keys=True)
    if cfg.base_model:  # another tokenizer: its own cache (sbt's own keys stay as they were)
        key += "tokenizer" + hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()
    if cfg.paths_file:  # the given paths (and their content) instead of train.jsonl
        if not Path(cfg.paths_file).is_file():
            raise SbtError(f"paths file not found: {cfg.paths_file}")
        key += cfg.paths_file + hashlib.sha256(Path(cfg.paths_file).read_bytes()).hexdigest()
    if cfg.extra_puzzles:
        if not Path(cfg.extra_puzzles).is_file():
            raise SbtError(f"extra puzzles file not found: {cfg.extra_puzzles}")
        key += "extra" + cfg.extra_puzzles + hashlib.sha256(Path(cfg.extra_puzzles).read_bytes()).hexdigest()
    rules = _rules(cfg.data_dir)
    if rules != "all":  # (the examples are built under the data's rules; rules "all" keep their keys)
        key += f"rules-{rules}"
    # (the key's version: a new one when what is built changes, e.g. duplicate paths dropped)
    key += "v2"
    cache = Path(cfg.out) / "checkpoint" / f"dataset-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    cached = ckpt_io.load_dataset(cache)
    if cached is not None:
        tensors, info = cached
        data = EncodedDataset.from_state(tensors)
        data.paths_info = info.get("paths_info")
        data.extra_info = info.get("extra_info")
        return data
    from sbt_core.hf import special_prefix

    prefix = special_prefix(tok)  # (once: what the tokenizer puts in front of a text, e.g. <bos>)
    paths_info = None
    if cfg.paths_file:
        counts: dict = {}
        examples, dropped = path_examples(cfg.paths_file, cfg.train_puzzles, cfg.recipe(), cfg.seed, counts=counts,
                                          rules=rules)
        kept = sum(ex.kind == "op" for ex in examples)
        own = sum(ex.kind == "own-error" for ex in examples)
        dups = counts.get("duplicates", 0)
        log(f"{len(examples):,} examples ({cfg.data}) from {kept:,} paths in {cfg.paths_file}"
            + (f" and {own:,} of the model's own mistakes" if own else "") + f" ({dropped:,} dropped: not verified"
            + (f"; {dups:,} duplicate puzzles dropped, the first line of each kept" if dups else "") + ")")
        if not examples:
            raise SbtError(f"{cfg.paths_file}: no verified paths to train on ({dropped:,} dropped)")
        pairs = [encode(ex, tok, prefix=prefix) for ex in examples]
        paths_info = {"file": cfg.paths_file, "kept": kept, "dropped": dropped, "duplicates": dups,
                      "own_errors": own}
    else:
        train_file = Path(cfg.data_dir) / "train.jsonl"
        puzzles = read_puzzles(train_file, cfg.train_puzzles, rules=rules)
        log(f"building examples from {len(puzzles):,} puzzles ({cfg.data})")
        pairs = [encode(ex, tok, prefix=prefix) for ex in build_examples(puzzles, cfg.recipe(), cfg.seed)]
    extra_info = None
    if cfg.extra_puzzles:
        extra = read_puzzles(cfg.extra_puzzles, rules=rules)
        examples = list(build_examples(extra, cfg.recipe(), cfg.seed + 1))
        log(f"+ {len(examples):,} examples ({cfg.data}) from the solver paths of {len(extra):,} puzzles in {cfg.extra_puzzles}")
        pairs += [encode(ex, tok, prefix=prefix) for ex in examples]
        extra_info = {"file": cfg.extra_puzzles, "puzzles": len(extra), "examples": len(examples)}
    data = EncodedDataset(pairs)
    data.paths_info, data.extra_info = paths_info, extra_info
    if save:  # (data-parallel: rank 0 alone writes the cache; another rank that cannot read it builds its own)
        ckpt_io.save_dataset(cache, data.state(), {"paths_info": paths_info, "extra_info": extra_info})
    return data


def lr_at(cfg: TrainConfig, step: int, total_steps: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def train(cfg: TrainConfig, resume: bool = False, log: Callable[[str], None] = print,
          on_step: Callable[[dict], None] | None = None, command: str = "", device: str | None = None) -> dict:
    """Train; returns the final ``training.json`` dict (``command``: the command line it records).

    Holds the lock of ``cfg.out`` for the whole run (a second writer gets one line naming
    this process). With ``resume`` the model, optimizer, EMA and step come from
    ``cfg.out/checkpoint``; the settings are ``cfg``'s (``sbt train --resume`` makes them
    from the checkpoint's and refuses a changed one). ``device``: ``--device`` (auto, cpu,
    cuda, cuda:N, mps; None: auto, cuda when there is one).

    Under torchrun (2 or more processes) every rank calls it: rank 0 logs, holds the lock
    and writes (``log`` and ``on_step`` are not called on the other ranks, which return a
    short dict of their own, without ``curve``)."""
    out = Path(cfg.out)
    ckpt = out / "checkpoint"
    if cfg.objective != "sft" and distributed.world() is not None:
        raise SbtError(f"--objective {cfg.objective} runs in one process; start it without torchrun")
    distributed.check_world(cfg.batch_size, device)
    dev, group = distributed.start(device)  # (a device that is not here: one line, nothing written)
    if group is not None and not group.writer:
        log, on_step = _quiet, None

    try:
        with contextlib.ExitStack() as held:
            def claim() -> None:
                if ckpt_io.exists(ckpt) and not resume:
                    raise SbtError(f"{out} already has a checkpoint; pass --resume to continue it or choose another --out")
                if resume and not ckpt_io.exists(ckpt):
                    raise SbtError(f"--resume: no checkpoint in {ckpt}")
                held.enter_context(output_lock(out, is_dir=True, what="--out"))

            if group is None:
                claim()
                if cfg.objective != "sft":  # DPO / KTO / GRPO: their own loop (training/finetune.py)
                    from .finetune import train_finetune

                    return train_finetune(cfg, resume, log, on_step, command, dev)
                return _train(cfg, resume, log, on_step, command, dev)
            group.agree(claim)  # rank 0 alone holds the lock; its refusal is every rank's
            # (a rank that stops, killed or interrupted: one line on the others, not a traceback)
            with distributed.interrupts_as_keyboard(group), group.guard():
                return _train(cfg, resume, log, on_step, command, dev, group)
    finally:
        if group is not None:
            group.close()


def _quiet(message: str) -> None:
    """The log of a rank that is not rank 0: nothing (rank 0 says it once)."""


def _train(cfg: TrainConfig, resume: bool, log: Callable[[str], None],
           on_step: Callable[[dict], None] | None, command: str, device: torch.device,
           group: distributed.Group | None = None) -> dict:
    out = Path(cfg.out)
    ckpt = out / "checkpoint"
    writer = group is None or group.writer
    saved = None
    if resume:  # a damaged checkpoint: one line before any work
        saved = ckpt_io.load(ckpt) if group is None else group.each(lambda: ckpt_io.load(ckpt))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if group is None:
        tok, model, base_info = _load_tokenizer_and_model(cfg, device, log)
        data = _dataset(cfg, tok, log)
        val = read_puzzles(Path(cfg.data_dir) / "val.jsonl", cfg.eval_puzzles, rules=_rules(cfg.data_dir))
    else:
        tok, model, base_info = group.each(lambda: _load_tokenizer_and_model(cfg, device, log))
        # rank 0 builds the data set (and its cache) and reads val; then the others load the
        # cache (or, where they cannot see it, build the same data themselves)
        first = group.agree(lambda: (_dataset(cfg, tok, log),
                                     read_puzzles(Path(cfg.data_dir) / "val.jsonl", cfg.eval_puzzles,
                                                  rules=_rules(cfg.data_dir))))
        data, val = group.each(lambda: first if writer else (_dataset(cfg, tok, log, save=False), []))
        group.check_same(distributed.dataset_digest(data), "training data")
        if len(data) < group.world:
            raise SbtError(f"the training data has {len(data):,} examples, fewer than the {group.world} processes "
                           "torchrun started (WORLD_SIZE); start fewer")
    trained = [p for p in model.parameters() if p.requires_grad]  # (--lora: the adapters and new token rows)
    decay = [p for p in trained if p.ndim >= 2]
    no_decay = [p for p in trained if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98),
                            fused=device.type == "cuda")
    state = TrainState()
    average = None
    where = ckpt / (ckpt_io.STATE_JSON if (ckpt / ckpt_io.STATE_JSON).is_file() else ckpt_io.LEGACY)
    try:
        if saved is not None:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            state = TrainState(**saved["train_state"])
            if not (isinstance(state.step, int) and isinstance(state.tokens, int) and state.step >= 0
                    and isinstance(state.wall_s, (int, float)) and isinstance(state.curve, list)):
                raise ValueError("bad train state")
        average = WeightAverage(model, cfg.ema) if cfg.ema else None
        if average and saved is not None and saved.get("ema"):
            average.load_state_dict(saved["ema"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise SbtError(f"{where}: the checkpoint does not fit this model ({type(exc).__name__}: "
                       f"{first[:120]})") from None
    if saved is not None:
        log(f"resumed at step {state.step:,} ({state.tokens:,} tokens)")
    shipped = average.applied if average else contextlib.nullcontext
    avg_len = data.n_tokens / len(data)
    total_steps = max(1, int(cfg.max_tokens / (avg_len * cfg.batch_size)))
    try:
        precision = resolve_precision(cfg.precision, device, _cpu_has_bf16())
        compiled = resolve_compile(cfg.compile, device, total_steps - state.step)
    except ValueError as exc:
        raise SbtError(str(exc)) from None
    with group.guard() if group is not None else contextlib.nullcontext():  # (DDP: rank 0's weights to every rank)
        stepper = Stepper(model, opt, precision, compiled, log=log, group=group)
    log(f"precision {precision}, torch.compile {'on' if compiled else 'off'}, {torch.get_num_threads()} threads"
        + (f"; data-parallel: {group.world} processes on {device.type} (rank 0 writes)" if group is not None else ""))
    model.train()
    t_start, tokens_window, t_window, loss_ema = time.time() - state.wall_s, 0, time.time(), None

    def checkpoint():
        state.wall_s = time.time() - t_start
        ckpt_io.save(ckpt, model=model.state_dict(), optimizer=opt.state_dict(), train_state=asdict(state),
                     config=asdict(cfg), ema=average.state_dict() if average else None)

    def evaluate():
        with shipped():
            rep = greedy_accuracy(model, tok, val)
        point = {"step": state.step, "tokens": state.tokens, "wall_s": round(time.time() - t_start, 1),
                 "loss": round(loss_ema, 4) if loss_ema is not None and math.isfinite(loss_ema) else None,
                 "val_greedy": rep.accuracy, "val_ended_backtrack": rep.to_json()["ended_backtrack"]}
        state.curve.append(point)
        log(json.dumps(point))
        best_file = out / "best" / "best.json"
        best = _best_so_far(best_file)
        if rep.accuracy > best:  # keep the best-on-val model too (model selection on val only)
            with shipped():
                save_trained(model, tok, out / "best", cfg)
            write_json(best_file, point)

    if group is not None:  # every rank knows the whole global batch: its token counts need no message
        counts, lengths = trained_counts(data), data.offsets[1:] - data.offsets[:-1]
    for step, epoch, batch in iterate(data, cfg.batch_size, cfg.seed, state.step):
        if step >= total_steps:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step, total_steps)
        if group is None:
            inputs = {k: v.to(device) for k, v in collate(data, batch, tok.pad_token_id, stepper.pad_multiple).items()}
            loss = stepper.step(inputs)
            n_tok = int(inputs["attention_mask"].sum())
        else:  # this rank's slice of the global batch (examples r, r + W, ...: alike in length)
            part = batch[group.rank::group.world]
            inputs = {k: v.to(device) for k, v in collate(data, part, tok.pad_token_id, stepper.pad_multiple).items()}
            loss = stepper.step(inputs, int(counts[batch].sum()))
            n_tok = int(lengths[batch].sum())
        if average:
            average.update()
        state.step, state.tokens = step + 1, state.tokens + n_tok
        tokens_window += n_tok
        loss_ema = loss if loss_ema is None else 0.98 * loss_ema + 0.02 * loss
        if on_step:
            now = time.time()
            on_step({"step": state.step, "total": total_steps, "loss": loss_ema, "epoch": epoch,
                     "tokens_per_s": tokens_window / max(now - t_window, 1e-6)})
            if now - t_window > 30:
                tokens_window, t_window = 0, now
        if writer and state.step % cfg.eval_every == 0:
            evaluate()
        if writer and state.step % cfg.ckpt_every == 0:
            checkpoint()

    def finish() -> dict:
        """The end of the run (rank 0): the last evaluation and checkpoint, the model
        directory, training.json (and a model card for a brought base)."""
        if not state.curve or state.curve[-1]["step"] != state.step:
            evaluate()
        checkpoint()
        with shipped():
            save_trained(model, tok, out, cfg)
        report = {
            "command": command,
            "config": asdict(cfg),
            "data": {"train_file": cfg.paths_file or str(Path(cfg.data_dir) / "train.jsonl"), "examples": len(data),
                     "example_tokens": data.n_tokens, "recipe": cfg.recipe().to_json(),
                     "given_paths": data.paths_info, "extra_puzzles": data.extra_info},
            "params": sum(p.numel() for p in model.parameters()),
            "steps": state.step, "tokens": state.tokens, "wall_s": round(time.time() - t_start, 1),
            "hardware": _hardware(device), "device": str(device), "world_size": group.world if group else 1,
            "precision": {"bf16": "bf16-autocast"}.get(precision, precision),
            "compiled": stepper.compiled,
            "versions": {"sbt": __import__("sbt_core").__version__, "torch": torch.__version__,
                         "transformers": __import__("transformers").__version__,
                         **({"peft": __import__("peft").__version__} if cfg.lora else {})},
            **({"base_model": base_info} if base_info else {}),
            **_puzzle_kind(cfg.data_dir),  # what `sbt solve` picks this model for (models.trained_for)
            "curve": state.curve,
            "final": state.curve[-1] if state.curve else None,
        }
        write_json(out / "training.json", report)
        if base_info:  # a model card that names the base, the recipe and sbt's version (training/model_card.py)
            from .model_card import render

            (out / "README.md").write_text(render(out))
        return report

    if group is None:
        return finish()
    report = group.agree(finish)  # (rank 0 writes; its failure is every rank's one line)
    return report if writer else {"rank": group.rank, "world_size": group.world, "steps": state.step,
                                  "tokens": state.tokens, "final": None}


def _puzzle_kind(data_dir: str) -> dict:
    """The number count and rules of the data folder's puzzles (its meta.json, written by
    ``sbt data generate``): ``{"n_numbers": N, "rules": R}``, or {} when it does not say."""
    try:
        meta = json.loads((Path(data_dir) / "meta.json").read_text())
        n = meta["n_numbers"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    rules = meta.get("rules", "all")
    return {"n_numbers": n, "rules": rules} if isinstance(n, int) and rules in ("all", "any") else {}


def _rules(data_dir: str) -> str:
    """The rules the data folder's puzzles are for (its meta.json; "all" when it says none):
    the examples, the tokenizer and the model are built for them, and a puzzle line that
    names other rules is refused (``sbt_core.generate.read_puzzles``; a paths-file line is dropped)."""
    return _puzzle_kind(data_dir).get("rules", "all")


def _best_so_far(best_file: Path) -> float:
    """The val accuracy of the kept best model (-1 when none, or its record is unreadable)."""
    try:
        value = json.loads(best_file.read_text())["val_greedy"]
        return float(value) if isinstance(value, (int, float)) else -1.0
    except (OSError, ValueError, KeyError, TypeError):
        return -1.0


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _hardware(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
