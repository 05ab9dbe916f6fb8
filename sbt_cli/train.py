"""``sbt train``: build D_op / D_back and fine-tune a causal LM with the masked loss."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from sbt_core.errors import SbtError


def train_cmd(
    out: Path = typer.Option(..., "--out", help="output model directory"),
    numbers: int = typer.Option(4, "--numbers", help="puzzle size; picks data/countdown<N>/ by default"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="folder from `sbt data generate`"),
    data: str = typer.Option("op+back", "--data", help="op (SFT baseline) or op+back (self-backtracking)"),
    back_ratio: float = typer.Option(1.0, "--back-ratio", help="|D_back| / |D_op|"),
    kinds: str = typer.Option("1:2:2", "--kinds", help="exploration:computational:rule error weights"),
    goal_forcing: float = typer.Option(0.5, "--goal-forcing", help="share of computational errors that are a last step claiming the target with wrong arithmetic"),
    honest_last: float = typer.Option(0.0, "--honest-last", min=0.0, max=1.0, help="share of paths that also get a last step with its true result (another operation, missing the target) then <backtrack>; the result is trained, so last steps are computed, not copied from the target"),
    own_errors: float = typer.Option(1.0, "--own-errors", help="with --paths from `sbt harvest --mistakes`: share of the model's own false goal claims made into backtracking examples"),
    size: str = typer.Option("small", "--size", help="tiny|small|medium|large (ignored with --base-model)"),
    base_model: Optional[Path] = typer.Option(None, "--base-model", help="fine-tune a local HF causal-LM dir"),
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
    ema: float = typer.Option(0.0, "--ema", help="evaluate and save an exponential moving average of the weights with this decay per step (e.g. 0.995; 0: off)"),
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/checkpoint"),
    quiet: bool = typer.Option(False, "--quiet", help="log lines instead of a progress bar (the default when stderr is not a terminal, e.g. under nohup)"),
) -> None:
    """Train a Countdown model (optimal paths, or optimal paths + backtracking examples)."""
    import os

    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from training.sft import TrainConfig, train

    os.environ.setdefault("SBT_TRAIN_COMMAND", "sbt " + shlex.join(sys.argv[1:]))
    try:
        weights = tuple(float(x) for x in kinds.split(":"))
        assert len(weights) == 3 and all(w >= 0 for w in weights) and sum(weights) > 0
    except (ValueError, AssertionError):
        raise SbtError(f"--kinds must look like 1:2:2 (three non-negative weights), got {kinds!r}") from None
    data_dir = data_dir or Path("data") / f"countdown{numbers}"
    if not (data_dir / "train.jsonl").is_file():
        raise SbtError(f"no training data in {data_dir}; run: sbt data generate --numbers {numbers} --out {data_dir}")
    cfg = TrainConfig(out=str(out), data_dir=str(data_dir), data=data, back_ratio=back_ratio, kind_weights=weights, goal_forcing=goal_forcing, own_errors=own_errors,
                      honest_last=honest_last, size=size, base_model=str(base_model) if base_model else None, train_puzzles=train_puzzles,
                      batch_size=batch_size, lr=lr, seed=seed, eval_every=eval_every or 500,
                      eval_puzzles=eval_puzzles, ckpt_every=ckpt_every, precision=precision, compile=compile_, threads=threads, ema=ema,
                      paths_file=str(paths) if paths else None, extra_puzzles=str(extra_puzzles) if extra_puzzles else None)
    if tokens is not None:
        cfg.max_tokens = int(tokens)
    if resume:
        saved = out / "checkpoint" / "state.pt"
        if saved.is_file():
            saved_cfg = torch.load(saved, weights_only=False)["config"]
            saved_cfg.setdefault("goal_forcing", 0.0)  # checkpoints from before the option: their data had none
            cfg = TrainConfig(**saved_cfg)
            if tokens is not None:
                cfg.max_tokens = int(tokens)
            if eval_every:
                cfg.eval_every = eval_every
            if threads:  # how many threads is the machine's business, not the experiment's
                cfg.threads = threads
    try:
        cfg.recipe()
    except ValueError as exc:
        raise SbtError(str(exc)) from None
    console = Console(stderr=True)
    if quiet or not console.is_interactive:  # a log file (nohup) gets lines; a bar only redraws on a terminal
        def log_step(info: dict) -> None:
            if info["step"] % 50 == 0 or info["step"] == info["total"]:
                print(f"step {info['step']:,}/{info['total']:,} loss {info['loss']:.4f} "
                      f"{info['tokens_per_s']:,.0f} tok/s epoch {info['epoch']}", flush=True)

        report = train(cfg, resume=resume, log=lambda m: print(m, flush=True), on_step=log_step)
    else:
        with Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                      TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
            task = bar.add_task("train", total=None, loss=float("nan"), tps=0.0)

            def on_step(info: dict) -> None:
                bar.update(task, completed=info["step"], total=info["total"], loss=info["loss"], tps=info["tokens_per_s"])

            report = train(cfg, resume=resume, log=bar.console.print, on_step=on_step)
    final = report["final"] or {}
    typer.echo(f"saved {out}: {report['steps']:,} steps, {report['tokens']:,} tokens, {report['wall_s']:.0f} s, "
               f"val greedy {final.get('val_greedy', 0):.1%}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
