"""``sbt iterate``: expert iteration (search on train puzzles -> keep verified paths ->
fine-tune -> evaluate fast and slow on test_new), resumable per round."""

from __future__ import annotations

import functools
import signal
import sqlite3
from pathlib import Path
from typing import Optional

import typer

from sbt_cli import sigterm_as_interrupt

from sbt_core.errors import SbtError
from sbt_core.settings import FLAG_HELP

DB_HELP = "results database (default: $SBT_DB, else results.db at the repository root)"



def iterate_cmd(
    model: Optional[str] = typer.Option(None, "--model", help="starting self-backtracking model: a name in models/ or a directory (default: the shipped model for --numbers)"),
    numbers: Optional[int] = typer.Option(None, "--numbers", min=3, max=6, help="input numbers per puzzle (default: from the model name, else 4)"),
    data: Optional[str] = typer.Option(None, "--data", help="fine-tuning data: op (the verified paths as plain paths; the authors' script) | op+back (plus backtracking examples built on them); default op. (A folder here is taken as --data-dir, as before.)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="data folder with train.jsonl and test_new.jsonl (default: data/countdown<N>)"),
    rounds: int = typer.Option(3, "--rounds", min=0, help="expert-iteration rounds K (round 0 = the starting model)"),
    train_puzzles: int = typer.Option(2000, "--train-puzzles", min=1, help="train puzzles searched per round (a different seeded slice each round)"),
    n: int = typer.Option(16, "--n", min=1, help="self-backtracking: samples per expansion"),
    b: int = typer.Option(1, "--b", min=0, help="self-backtracking: backtracking budget"),
    temperature: float = typer.Option(0.7, "--temperature", min=0.0, help="sampling temperature of the search"),
    eval_limit: Optional[int] = typer.Option(1000, "--eval-limit", min=1, help="test_new puzzles per evaluation"),
    tokens: float = typer.Option(500_000, "--tokens", min=1, help="fine-tuning budget per round, in training tokens (e.g. 5e5)"),
    restart_from: str = typer.Option("base", "--restart-from", help="fine-tune each round from: base (the starting model; sbt's default) | previous (the previous round's model; the authors' script)"),
    continue_: bool = typer.Option(False, "--continue", help="fine-tune each round from the previous round's model (= --restart-from previous)"),
    lr: float = typer.Option(5e-4, "--lr", min=0.0, help="fine-tuning learning rate"),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="fine-tuning batch size"),
    threads: int = typer.Option(0, "--threads", min=0, help="torch threads for fine-tuning (0: default)"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="searches and evaluations: " + FLAG_HELP["dtype"]),
    device: Optional[str] = typer.Option(None, "--device", help="searches and evaluations: " + FLAG_HELP["device"]),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for the per-round files and models (default: runs/iterate/<experiment>)"),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
    seed: int = typer.Option(0, "--seed", help="seed of the train slices, the searches and the fine-tuning"),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="experiment name in the iterations table (default: <model>-iterate)"),
    trace: bool = typer.Option(False, "--trace/--no-trace", help="store the event traces of the test_new evaluations"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
    workers: int = typer.Option(1, "--workers", help="worker processes for the searches and evaluations, each with its "
                                "own copy of the model on one thread (1-64; the rows are those of --workers 1; "
                                "fine-tuning stays one process)"),
) -> None:
    """Expert iteration: self-backtracking search on TRAIN puzzles, fine-tune on the verified answers, evaluate fast (greedy) and slow (search) on test_new; K rounds.

    Round r searches with the model of round r-1 and fine-tunes the starting model (or, with --continue, the previous one, as the authors' script does) on the verified answers, as plain paths (--data op, the authors' choice) or with backtracking examples built on them (--data op+back). Every search and evaluation is a stored run; each round is a row of the `iterations` table. Re-running the same command resumes: finished rounds are skipped, an unfinished one continues (stored runs, training checkpoint).
    """
    from rich.console import Console

    from harness.iterate import IterateConfig, Iteration
    from harness.runner import BenchInterrupted, infer_numbers
    from sbt_cli.views import RichProgress, iterations_table, stdout_console
    from harness.store import open_store
    from sbt_core.limits import MAX_TRAIN_TOKENS, check_range
    from sbt_core.models import default_model
    from sbt_core.settings import backend_options
    from harness.workers import check_workers

    check_workers(workers)
    check_range(tokens, "--tokens", 1, MAX_TRAIN_TOKENS)  # (before int(): nan, inf)
    if data is not None and data not in ("op", "op+back"):  # a data folder, as --data was before --data-dir
        if data_dir is not None:
            raise SbtError(f"--data must be op or op+back when --data-dir is given, got {data!r}")
        data, data_dir = None, Path(data)
    options = backend_options("torch", dtype=dtype, device=device)
    if continue_:
        if restart_from not in ("base", "previous"):
            raise SbtError(f"--restart-from must be base or previous, got {restart_from!r}")
        restart_from = "previous"
    n_numbers = numbers or infer_numbers(model)
    model = model or default_model(n_numbers)
    experiment = experiment or f"{Path(model).name}-iterate"
    if not experiment.strip() or "/" in experiment:
        raise SbtError(f"--experiment {experiment!r}: use a plain name (no '/')")
    cfg = IterateConfig(model=model, experiment=experiment, out=out or Path("runs") / "iterate" / experiment,
                        numbers=n_numbers, data=data_dir, train_data=data or "op", rounds=rounds, train_puzzles=train_puzzles, n=n, b=b,
                        temperature=temperature, eval_limit=eval_limit, tokens=int(tokens), restart_from=restart_from,
                        seed=seed, lr=lr, batch_size=batch_size, threads=threads, trace=trace,
                        workers=workers)
    err = Console(stderr=True, highlight=False)

    def observer_factory(title: str):
        if quiet:
            from contextlib import nullcontext

            from harness.runner import NullObserver

            return nullcontext(NullObserver())
        return RichProgress(err, n_runs=1)

    def on_train_step(info: dict) -> None:
        if info["step"] % 100 == 0 or info["step"] == info["total"]:
            err.print(f"  step {info['step']:,}/{info['total']:,} loss {info['loss']:.4f} "
                      f"{info['tokens_per_s']:,.0f} tok/s")

    it = Iteration(cfg, None, log=lambda m: err.print(m, markup=False, soft_wrap=True),  # type: ignore[arg-type]
                   observer_factory=observer_factory, on_train_step=None if quiet else on_train_step,
                   backend_factory=_with_options(options) if options else None, options=options)
    it.preflight()  # the model and the data resolve before the database is touched
    store = it.store = open_store(db)
    old = signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    try:
        try:
            rows = it.run()
        except (KeyboardInterrupt, BenchInterrupted):
            err.print(f"interrupted; finished rounds are kept in {store.path or ':memory:'}. "
                      "Re-run the same command to continue.", soft_wrap=True)
            raise typer.Exit(130)
        except sqlite3.DatabaseError as exc:
            raise SbtError(f"results database {store.path}: {exc}") from None

        stdout_console().print(iterations_table(rows, title=f"Expert iteration {experiment!r}: "
                                                             "fast = greedy, slow = self-backtracking search "
                                                             f"(n={n}, b={b}) on test_new"))
    finally:
        signal.signal(signal.SIGTERM, old)
        store.close()


def register(app: typer.Typer) -> None:
    app.command("iterate")(iterate_cmd)


def _with_options(options):
    """The default model factory with ``--dtype`` / ``--device`` applied."""
    from harness.iterate import torch_backend_factory

    factory = functools.partial(torch_backend_factory, options=options)
    factory.same_for_all_roles = True  # type: ignore[attr-defined]
    return factory
