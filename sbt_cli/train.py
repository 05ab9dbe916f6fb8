"""``sbt train``: build D_op / D_back and fine-tune a causal LM with the masked loss."""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from sbt_cli import option_given
from sbt_core.errors import SbtError


def train_cmd(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", help="output model directory"),
    numbers: int = typer.Option(4, "--numbers", help="puzzle size; picks data/countdown<N>/ by default"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="folder from `sbt data generate`"),
    data: str = typer.Option("op+back", "--data", help="op (SFT baseline) or op+back (self-backtracking)"),
    recipe: str = typer.Option("sbt", "--recipe", help="paper: the paper's data exactly (D_op + D_back 1:1, error kinds 1:2:2, prompt and wrong step masked; no goal-forcing, honest-last, weight average or extra data; options that would change it are refused) | sbt: sbt's defaults (adds --goal-forcing 0.5)"),
    back_ratio: float = typer.Option(1.0, "--back-ratio", help="|D_back| / |D_op|"),
    kinds: str = typer.Option("1:2:2", "--kinds", help="exploration:computational:rule error weights"),
    goal_forcing: float = typer.Option(0.5, "--goal-forcing", help="share of computational errors that are a last step claiming the target with wrong arithmetic"),
    honest_last: float = typer.Option(0.0, "--honest-last", min=0.0, max=1.0, help="share of paths that also get a last step with its true result (another operation, missing the target) then <backtrack>; the result is trained, so last steps are computed, not copied from the target"),
    own_errors: float = typer.Option(1.0, "--own-errors", help="with --paths from `sbt harvest --mistakes`: share of the model's own false goal claims made into backtracking examples"),
    size: str = typer.Option("small", "--size", help="tiny|small|medium|large (ignored with --base-model)"),
    base_model: Optional[Path] = typer.Option(None, "--base-model", help="fine-tune a local Hugging Face causal-LM directory (GPT-2, Llama, Qwen2, Mistral, ... with its own tokenizer; safetensors; or an adapter dir of `--lora`)"),
    lora: int = typer.Option(0, "--lora", help="with --base-model: train LoRA adapters of this rank (peft: pip install 'sbt[hf]') and save an adapter directory (sbt loads it merged)"),
    merge: bool = typer.Option(False, "--merge", help="with --lora: save the adapters merged into the model (a plain model directory)"),
    train_puzzles: Optional[int] = typer.Option(None, "--train-puzzles", help="use the first N train puzzles (with --paths: the first N paths)"),
    paths: Optional[Path] = typer.Option(None, "--paths", help="train on the verified solution paths in this JSONL ({numbers, target, steps} per line, e.g. `sbt harvest` output) instead of solver paths; with --data op+back the backtracking examples are built on them"),
    extra_puzzles: Optional[Path] = typer.Option(None, "--extra-puzzles", help="also train on the solver paths of the puzzles in this JSONL (e.g. data/countdown3-small/train.jsonl from `sbt data generate --max-number 12`)"),
    tokens: Optional[float] = typer.Option(None, "--tokens", help="training tokens to process (default 50M)"),
    batch_size: int = typer.Option(256, "--batch-size"),
    lr: float = typer.Option(2e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="steps between val greedy evaluations (500)"),
    eval_puzzles: int = typer.Option(300, "--eval-puzzles"),
    ckpt_every: int = typer.Option(200, "--ckpt-every", help="steps between checkpoints"),
    precision: str = typer.Option("auto", "--precision", help="auto|fp32|bf16|bf16-master (auto: bf16-master on CPUs with bf16, bf16 autocast on CUDA)"),
    compile_: str = typer.Option("auto", "--compile", help="auto|on|off: torch.compile the training step (auto: CPU runs of 300+ steps)"),
    threads: int = typer.Option(0, "--threads", help="torch threads (0: default)"),
    device: Optional[str] = typer.Option(None, "--device", help="auto|cpu|cuda|cuda:N|mps (default: $SBT_DEVICE, else auto: cuda when there is one); under torchrun each process takes the GPU of its LOCAL_RANK"),
    ema: float = typer.Option(0.0, "--ema", help="evaluate and save an exponential moving average of the weights with this decay per step (e.g. 0.995; 0: off)"),
    objective: str = typer.Option("sft", "--objective", help="sft: the masked-loss SFT on D_op / D_back | dpo | kto: preference optimisation of --base-model on the verifier-labelled samples of --prefs | grpo: RL of --base-model on its own answers to train puzzles, reward 1 when the strict verifier accepts one (defaults for dpo/kto/grpo: --lr 1e-5, --batch-size 64 (grpo: 16 puzzles), --eval-every 50; grpo: --train-puzzles 2048, --beta 0)"),
    prefs: Optional[Path] = typer.Option(None, "--prefs", help="with --objective dpo|kto: a file of `sbt harvest --labelled K` (train puzzles only)"),
    beta: Optional[float] = typer.Option(None, "--beta", help="dpo|kto: the strength of the pull to the reference model (default 0.1) | grpo: the KL penalty to the starting model (default 0: none)"),
    pairs: int = typer.Option(1, "--pairs", help="dpo: (verified, failing) pairs per puzzle at most"),
    sft_weight: float = typer.Option(0.0, "--sft-weight", help="dpo: add this times the chosen answers' mean token NLL (RPO; 0: plain DPO)"),
    desirable_weight: float = typer.Option(1.0, "--desirable-weight", help="kto: weight of the verified samples' loss"),
    undesirable_weight: float = typer.Option(1.0, "--undesirable-weight", help="kto: weight of the failing samples' loss"),
    epochs: float = typer.Option(1.0, "--epochs", help="dpo|kto|grpo: passes over the examples (preference examples; grpo: the train puzzles)"),
    group: int = typer.Option(8, "--group", help="grpo: answers sampled per puzzle (the group its advantages are normalised in)"),
    temperature: float = typer.Option(1.0, "--temperature", help="grpo: sampling temperature of the answers"),
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/checkpoint, in OUT, with the checkpoint's settings (only --tokens, --eval-every, --ckpt-every, --threads, --device and the number of torchrun processes may change)"),
    quiet: bool = typer.Option(False, "--quiet", help="log lines instead of a progress bar (the default when stderr is not a terminal, e.g. under nohup)"),
) -> None:
    """Train a Countdown model (optimal paths, or optimal paths + backtracking examples).

    Under `torchrun --nproc_per_node K --no-python -- sbt train ...` it trains data-parallel:
    --batch-size is the global batch, split among the K processes; rank 0 writes."""
    from sbt_core.settings import train_device
    from training.config import RECIPES, TrainConfig
    from training.distributed import check_world, is_writer

    device = train_device(device)

    # every setting is checked here, before torch loads and before anything is written
    if recipe in RECIPES:  # the recipe's values, where the option was not given
        given = {"back_ratio": back_ratio, "kind_weights": kinds, "goal_forcing": goal_forcing,
                 "honest_last": honest_last, "ema": ema}
        param = {"kind_weights": "kinds"}
        for name, value in RECIPES[recipe].items():
            if not option_given(ctx, param.get(name, name)):
                given[name] = ":".join(f"{x:g}" for x in value) if name == "kind_weights" else value
        back_ratio, kinds, goal_forcing, honest_last, ema = (given[k] for k in ("back_ratio", "kind_weights",
                                                                               "goal_forcing", "honest_last", "ema"))
    try:
        weights = tuple(float(x) for x in kinds.split(":"))
    except ValueError:
        raise SbtError(f"--kinds must look like 1:2:2 (three non-negative weights), got {kinds!r}") from None
    finetune = objective in ("dpo", "kto", "grpo")
    only = {"beta": ("--beta", ("dpo", "kto", "grpo")), "epochs": ("--epochs", ("dpo", "kto", "grpo")),
            "pairs": ("--pairs", ("dpo",)), "sft_weight": ("--sft-weight", ("dpo",)), "desirable_weight": ("--desirable-weight", ("kto",)),
            "undesirable_weight": ("--undesirable-weight", ("kto",)), "group": ("--group", ("grpo",)),
            "temperature": ("--temperature", ("grpo",))}
    for param, (flag, objectives) in only.items():
        if option_given(ctx, param) and objective not in objectives:
            raise SbtError(f"{flag} goes with --objective {' or '.join(objectives)}")
    if finetune and option_given(ctx, "tokens"):
        raise SbtError(f"--objective {objective} runs for --epochs over its examples; drop --tokens")
    if finetune:  # fine-tuning defaults where the option was not given
        lr = lr if option_given(ctx, "lr") else 1e-5
        batch_size = batch_size if option_given(ctx, "batch_size") else (16 if objective == "grpo" else 64)
        eval_every = 50 if eval_every is None else eval_every
        if objective == "grpo" and train_puzzles is None:
            train_puzzles = 2048
    beta = beta if beta is not None else (0.0 if objective == "grpo" else 0.1)
    data_dir = data_dir or Path("data") / f"countdown{numbers}"
    if tokens is not None and not math.isfinite(tokens):
        raise SbtError(f"--tokens must be a number of training tokens (e.g. 5e7), got {tokens!r}")
    cfg = TrainConfig(out=str(out), data_dir=str(data_dir), data=data, back_ratio=back_ratio, kind_weights=weights, goal_forcing=goal_forcing, own_errors=own_errors,
                      honest_last=honest_last, size=size, base_model=str(base_model) if base_model else None, train_puzzles=train_puzzles,
                      batch_size=batch_size, lr=lr, seed=seed, eval_every=500 if eval_every is None else eval_every,
                      eval_puzzles=eval_puzzles, ckpt_every=ckpt_every, precision=precision, compile=compile_, threads=threads, ema=ema,
                      paths_file=str(paths) if paths else None, extra_puzzles=str(extra_puzzles) if extra_puzzles else None,
                      preset=recipe, lora=lora, merge=merge, objective=objective,
                      prefs_file=str(prefs) if prefs else None, beta=beta, pairs=pairs,
                      desirable_weight=desirable_weight, undesirable_weight=undesirable_weight, epochs=epochs,
                      group=group, temperature=temperature, sft_weight=sft_weight,
                      **({"max_tokens": int(tokens)} if tokens is not None else {}))
    if resume:
        cfg = _resumed_config(ctx, cfg, out)
    check_world(cfg.batch_size, device)  # (torchrun: the global batch must split among the processes)
    if not (Path(cfg.data_dir) / "train.jsonl").is_file():
        raise SbtError(f"no training data in {cfg.data_dir}; run: sbt data generate --numbers {numbers} --out {cfg.data_dir}")
    for name, what in (("paths_file", "paths file"), ("extra_puzzles", "extra puzzles file"),
                       ("prefs_file", "--prefs file")):
        if getattr(cfg, name) and not Path(getattr(cfg, name)).is_file():
            raise SbtError(f"{what} not found: {getattr(cfg, name)}")
    if not (Path(cfg.data_dir) / "val.jsonl").is_file():
        raise SbtError(f"no validation split in {cfg.data_dir} (val.jsonl); run: sbt data generate --numbers {numbers} "
                       f"--out {cfg.data_dir}")
    if cfg.lora:  # before anything loads: one line naming the extra
        from training.base_model import check_lora_available

        check_lora_available()
    if cfg.base_model:  # its config.json's sizes, weights (safetensors only) and tokenizer are checked before
        # anything is built or written (no huge allocation, no pickle)
        from training.base_model import check_base, check_base_dir

        check_base_dir(cfg.base_model)  # (without transformers: a bad directory is refused at once)
        check_base(cfg.base_model)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from training.sft import train

    command = "sbt " + shlex.join(sys.argv[1:])
    console = Console(stderr=True)
    if not is_writer():  # another rank of a torchrun job: rank 0 logs and reports
        train(cfg, resume=resume, log=lambda m: None, command=command, device=device)
        return
    if quiet or not console.is_interactive:  # a log file (nohup) gets lines; a bar only redraws on a terminal
        def log_step(info: dict) -> None:
            if info["step"] % 50 == 0 or info["step"] == info["total"]:
                print(f"step {info['step']:,}/{info['total']:,} loss {info['loss']:.4f} "
                      f"{info['tokens_per_s']:,.0f} tok/s epoch {info['epoch']}", flush=True)

        report = train(cfg, resume=resume, log=lambda m: print(m, flush=True), on_step=log_step, command=command,
                       device=device)
    else:
        with Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                      TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
            task = bar.add_task("train", total=None, loss=float("nan"), tps=0.0)

            def on_step(info: dict) -> None:
                bar.update(task, completed=info["step"], total=info["total"], loss=info["loss"], tps=info["tokens_per_s"])

            report = train(cfg, resume=resume, log=bar.console.print, on_step=on_step, command=command,
                           device=device)
    final = report["final"] or {}
    typer.echo(f"saved {out}: {report['steps']:,} steps, {report['tokens']:,} tokens, {report['wall_s']:.0f} s, "
               f"val greedy {final.get('val_greedy', 0):.1%}")


# option (its parameter name) -> the TrainConfig setting it gives
_SETTING = {"data_dir": "data_dir", "data": "data", "back_ratio": "back_ratio", "kinds": "kind_weights",
            "goal_forcing": "goal_forcing", "honest_last": "honest_last", "own_errors": "own_errors", "size": "size",
            "base_model": "base_model", "train_puzzles": "train_puzzles", "paths": "paths_file",
            "extra_puzzles": "extra_puzzles", "tokens": "max_tokens", "batch_size": "batch_size", "lr": "lr",
            "seed": "seed", "eval_every": "eval_every", "eval_puzzles": "eval_puzzles", "ckpt_every": "ckpt_every",
            "precision": "precision", "compile_": "compile", "threads": "threads", "ema": "ema", "recipe": "preset",
            "lora": "lora", "merge": "merge", "objective": "objective", "prefs": "prefs_file", "beta": "beta",
            "pairs": "pairs", "desirable_weight": "desirable_weight", "undesirable_weight": "undesirable_weight",
            "epochs": "epochs", "group": "group", "temperature": "temperature", "sft_weight": "sft_weight"}
_PATHS = ("data_dir", "base_model", "paths_file", "extra_puzzles", "prefs_file")


def _resumed_config(ctx: typer.Context, given, out: Path):
    """The checkpoint's config, in ``out`` (where the run lives now, whatever it was saved
    as), with the options that may change on resume taken from the command line; an
    option given explicitly with another value than the checkpoint's is refused."""
    from training import checkpoint as ckpt_io
    from training.config import FLAGS, RESUMABLE, TrainConfig

    ckpt = out / "checkpoint"
    if not ckpt_io.exists(ckpt):
        return given  # (train says there is nothing to resume)
    where = ckpt / (ckpt_io.STATE_JSON if (ckpt / ckpt_io.STATE_JSON).is_file() else ckpt_io.LEGACY)
    saved = TrainConfig.from_saved({**ckpt_io.read_config(ckpt), "out": str(out)}, str(where))

    def explicit(param: str) -> bool:
        return option_given(ctx, param)

    def same(name: str) -> bool:
        a, b = getattr(given, name), getattr(saved, name)
        if name in _PATHS and a is not None and b is not None:
            return Path(a).resolve() == Path(b).resolve()
        if name == "kind_weights":
            return tuple(map(float, a)) == tuple(map(float, b))
        return a == b

    changed, keep = [], {}
    for param, name in _SETTING.items():
        if not explicit(param):
            continue
        if name in RESUMABLE:
            keep[name] = getattr(given, name)
        elif not same(name):
            changed.append(f"{FLAGS[name]} {_show(getattr(given, name))} (checkpoint: {_show(getattr(saved, name))})")
    if explicit("numbers") and not explicit("data_dir") and not same("data_dir"):
        changed.append(f"--numbers (data {given.data_dir}; checkpoint: {saved.data_dir})")
    if changed:
        raise SbtError(f"--resume: {out} was trained with other settings: {'; '.join(changed)}. Settings that define "
                       "the run cannot change on resume (only --tokens, --eval-every, --ckpt-every, --threads, --device); "
                       "start a new run with another --out")
    return TrainConfig(**{**saved.__dict__, **keep})


def _show(value) -> str:
    if isinstance(value, tuple):
        return ":".join(f"{x:g}" for x in value)
    return "none" if value is None else str(value)


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
