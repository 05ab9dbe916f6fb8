"""Fine-tuning a trained model with another objective than SFT: ``sbt train --objective
dpo|kto|grpo --base-model DIR``. One linear loop for the three (an objective is a class with
its examples and its ``loss``): ``training/preference.py`` (DPO, KTO on ``--prefs``) and
``training/grpo.py`` (GRPO on train puzzles, the verifier as the reward).

The loop is ``sbt train``'s (``training/sft.py``) in small: the model from
``--base-model`` (the reference model, where the objective has one, is a frozen copy of it,
so a resumed run rebuilds it exactly), AdamW with sbt's warm-up and cosine schedule over
``--epochs`` passes over the examples (length-bucketed batches, ``training/batches.py``),
gradient clipping at 1, a checkpoint every ``--ckpt-every`` steps (safetensors + JSON,
``training/checkpoint.py``) that ``--resume`` continues, val greedy (sbt's greedy, the
strict verifier) at step 0 and every ``--eval-every`` steps with the best-on-val model kept,
and training.json with the objective, its data, the curve and the training compute (this
run and every run before it). One process (no torchrun), float32.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from sbt_core.files import write_json
from sbt_core.generate import read_puzzles


def objective_class(name: str):
    from .grpo import GRPO
    from .preference import DPO, KTO

    return {"dpo": DPO, "kto": KTO, "grpo": GRPO}[name]


def train_finetune(cfg, resume: bool, log: Callable[[str], None], on_step: Callable[[dict], None] | None,
                   command: str, device: torch.device) -> dict:
    """The run (the caller holds the lock of ``cfg.out`` and has checked ``--resume``)."""
    from sbt_core.errors import SbtError
    from sbt_core.hf import special_prefix

    from . import checkpoint as ckpt_io
    from .base_model import save_trained
    from .batches import iterate
    from .evaluate import greedy_accuracy
    from .sft import TrainState, _best_so_far, _hardware, _load_tokenizer_and_model, _puzzle_kind, _rules, lr_at

    out, ckpt = Path(cfg.out), Path(cfg.out) / "checkpoint"
    saved = ckpt_io.load(ckpt) if resume else None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tok, model, base_info = _load_tokenizer_and_model(cfg, device, log)
    objective = objective_class(cfg.objective)(cfg, tok, special_prefix(tok), log)
    ref = copy.deepcopy(model).eval().requires_grad_(False) if objective.needs_ref else None
    if len(objective) < cfg.batch_size:
        raise SbtError(f"{len(objective):,} {cfg.objective.upper()} examples, fewer than --batch-size "
                       f"{cfg.batch_size}; give more data or a smaller --batch-size")
    val = read_puzzles(Path(cfg.data_dir) / "val.jsonl", cfg.eval_puzzles, rules=_rules(cfg.data_dir))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    state = TrainState()
    if saved is not None:
        try:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            state = TrainState(**saved["train_state"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise SbtError(f"{ckpt}: the checkpoint does not fit this run ({type(exc).__name__})") from None
        log(f"resumed at step {state.step:,} ({state.tokens:,} tokens)")
    total_steps = max(1, int(cfg.epochs * (len(objective) // cfg.batch_size)))
    schedule = copy.copy(cfg)
    schedule.warmup_steps = min(cfg.warmup_steps, total_steps // 10)  # (a short run warms up for a tenth)
    model.train()
    t_start, loss_ema, seen = time.time() - state.wall_s, None, {}

    def checkpoint() -> None:
        state.wall_s = time.time() - t_start
        ckpt_io.save(ckpt, model=model.state_dict(), optimizer=opt.state_dict(), train_state=asdict(state),
                     config=asdict(cfg))

    def evaluate() -> None:
        model.eval()
        rep = greedy_accuracy(model, tok, val)
        model.train()
        point = {"step": state.step, "tokens": state.tokens, "wall_s": round(time.time() - t_start, 1),
                 "loss": round(loss_ema, 4) if loss_ema is not None and math.isfinite(loss_ema) else None,
                 "val_greedy": rep.accuracy, "val_ended_backtrack": rep.to_json()["ended_backtrack"],
                 **{k: round(v, 4) for k, v in seen.items()}}
        state.curve.append(point)
        log(json.dumps(point))
        best_file = out / "best" / "best.json"
        if rep.accuracy > _best_so_far(best_file):  # the best-on-val model too (selection on val only),
            save_trained(model, tok, out / "best", cfg)  # with the record of the run up to this step
            write_json(out / "best" / "training.json", {**report(), "selected": "best val greedy so far"})
            write_json(best_file, point)

    def report() -> dict:
        wall = time.time() - t_start
        return {
            "command": command,
            "config": asdict(cfg),
            "objective": {"name": cfg.objective, **objective.record(),
                          "reference": "the --base-model weights, frozen" if objective.needs_ref else None},
            "data": objective.data(),
            "params": sum(p.numel() for p in model.parameters()),
            "steps": state.step, "tokens": state.tokens, "wall_s": round(wall, 1),
            **({"generated_tokens": state.generated_tokens} if state.generated_tokens else {}),
            "hardware": _hardware(device), "device": str(device), "world_size": 1, "precision": "fp32",
            "compiled": False,
            "versions": {"sbt": __import__("sbt_core").__version__, "torch": torch.__version__,
                         "transformers": __import__("transformers").__version__},
            "base_model": base_info,
            "compute": training_compute(state.tokens, wall, _hardware(device), cfg.base_model, state.generated_tokens),
            **_puzzle_kind(cfg.data_dir),
            "curve": state.curve,
            "final": state.curve[-1] if state.curve else None,
        }

    if saved is None:
        evaluate()  # step 0: the starting model, on the same val puzzles
    for step, epoch, rows in iterate(objective, cfg.batch_size, cfg.seed, state.step):
        if step >= total_steps:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(schedule, step, total_steps)
        loss, n_tok, info = objective.loss(rows, model, ref, step, device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state.step, state.tokens = step + 1, state.tokens + n_tok
        state.generated_tokens += int(info.pop("generated_tokens", 0))
        value = float(loss.detach())
        loss_ema = value if loss_ema is None else 0.95 * loss_ema + 0.05 * value
        seen = {k: v if k not in seen else 0.95 * seen[k] + 0.05 * v for k, v in info.items()}
        if on_step:
            on_step({"step": state.step, "total": total_steps, "loss": loss_ema, "epoch": epoch,
                     "tokens_per_s": state.tokens / max(time.time() - t_start, 1e-6)})
        if state.step % cfg.eval_every == 0:
            evaluate()
        if state.step % cfg.ckpt_every == 0:
            checkpoint()
    if not state.curve or state.curve[-1]["step"] != state.step:
        evaluate()
    checkpoint()
    save_trained(model, tok, out, cfg)
    final = report()
    write_json(out / "training.json", final)
    return final


def training_compute(tokens: int, wall_s: float, hardware: str, base: str | None, generated: int = 0) -> dict:
    """The training compute of a model: this run's (``tokens``: the trained sequences'
    tokens; ``generated_tokens``: those it sampled, GRPO) and, through its base's
    training.json, every run before it (``total``: the sums; None where a base has no
    record), so models trained in several stages are compared at their whole cost."""
    this = {"tokens": int(tokens), "generated_tokens": int(generated), "wall_s": round(wall_s, 1),
            "hardware": hardware}
    before = {"tokens": 0, "generated_tokens": 0, "wall_s": 0.0}
    if base:
        try:
            prior = json.loads((Path(base) / "training.json").read_text())
            total = (prior.get("compute") or {}).get("total") or {"tokens": prior["tokens"], "wall_s": prior["wall_s"]}
            before = {"tokens": int(total["tokens"]), "generated_tokens": int(total.get("generated_tokens", 0)),
                      "wall_s": float(total["wall_s"])}
        except (OSError, ValueError, KeyError, TypeError):
            before = None  # a base without sbt's record: its compute is unknown
    total = None if before is None else {k: before[k] + this[k] for k in ("tokens", "generated_tokens")}
    if total is not None:
        total["wall_s"] = round(before["wall_s"] + this["wall_s"], 1)
    return {"this_run": this, "before": before, "total": total}
