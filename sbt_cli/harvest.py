"""``sbt harvest``: verified sampled paths of a model on TRAIN puzzles (rejection sampling),
the data of ``sbt train --paths``."""

from __future__ import annotations

import signal
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import typer

from sbt_cli import sigterm_as_interrupt
from sbt_core.errors import SbtError
from sbt_cli.options import Device, Dtype, Quant, Threads


def harvest_cmd(
    out: Path = typer.Option(..., "--out", help="paths file to write (JSONL; its record goes to OUT.json)"),
    model: Optional[str] = typer.Option(None, "--model", help="a name in models/ or a directory (default: the shipped backtracking model for --numbers)"),
    numbers: Optional[int] = typer.Option(None, "--numbers", min=3, max=6, help="input numbers per puzzle (default: from the model name, else 4)"),
    data: Optional[Path] = typer.Option(None, "--data", help="data folder with train.jsonl (default: data/countdown<N>)"),
    puzzles: int = typer.Option(10_000, "--puzzles", min=1, help="train puzzles to sample (a seeded slice of train.jsonl)"),
    n: int = typer.Option(16, "--n", min=1, help="samples per puzzle"),
    temperature: float = typer.Option(0.7, "--temperature", help="sampling temperature"),
    seed: int = typer.Option(0, "--seed", help="seed of the slice and of the samples"),
    mistakes: int = typer.Option(0, "--mistakes", min=0, help="also keep up to this many of each puzzle's false 'Goal Reached!' samples, cut after the step where they went wrong (sbt train --paths makes backtracking examples of them)"),
    labelled: int = typer.Option(0, "--labelled", min=0, help="also keep up to this many of each puzzle's distinct verified samples and as many failing ones, with the verifier's label: the preference data of `sbt train --objective dpo|kto --prefs OUT`"),
    backend: str = typer.Option("torch", "--backend", help="torch | llama (a GGUF beside the model; several times faster)"),
    dtype: Dtype = None,
    device: Device = None,
    threads: Threads = None,
    quant: Quant = None,
    workers: int = typer.Option(1, "--workers", help="worker processes, each with its own copy of the model on one "
                                "thread (1-64; default 1: this process). Same file as 1 worker"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar, nor progress lines (those replace the bar when stderr is not a terminal)"),
) -> None:
    """Sample N answers per TRAIN puzzle and keep, per puzzle, the verified one the model likes best.

    The strict verifier filters training data here (rejection sampling, as in expert iteration); it never touches evaluation splits. Train on the result with `sbt train --paths OUT [--data op+back]`. Re-running the same command resumes. Under torchrun the ranks share the puzzles; rank 0 writes OUT.
    """
    from harness.harvest import HarvestConfig
    from harness.runner import infer_numbers, resolve_data_dir
    from harness.workers import Ranks, check_workers
    from sbt_core.backends import load_backend
    from sbt_core.locks import output_lock
    from sbt_core.models import default_model
    from sbt_core.settings import BackendOptions, backend_options

    check_workers(workers)
    options = backend_options(backend, dtype=dtype, device=device, threads=threads, quant=quant)
    ranks = Ranks.from_env()  # torchrun: this process's rank (None: alone)
    n_numbers = numbers or infer_numbers(model)
    model = model or default_model(n_numbers)
    data_dir = resolve_data_dir(data, n_numbers)
    cfg = HarvestConfig(model=str(model), numbers=n_numbers, data=str(data_dir), puzzles=puzzles, n=n,
                        temperature=temperature, seed=seed, backend=backend, mistakes=mistakes,
                        labelled=labelled)
    if not (data_dir / "train.jsonl").is_file():
        raise SbtError(f"no train split: {data_dir / 'train.jsonl'} not found (generate it with "
                       f"`sbt data generate --numbers {n_numbers} --out {data_dir}`)")
    if out.is_dir():
        raise SbtError(f"--out {out} is a folder; give the paths file to write (e.g. {out / 'paths.jsonl'})")
    if ranks is not None:
        ranks.check_size(puzzles, "train puzzle")
    writer = ranks is None or ranks.writer  # under torchrun, rank 0 writes OUT and shows progress
    old = signal.signal(signal.SIGTERM, sigterm_as_interrupt)  # a kill keeps what is written, exit 130
    try:
        # one writer per paths file, before the model loads
        with output_lock(out, is_dir=False, what="--out") if writer else nullcontext():
            if ranks is not None:
                ranks.start((options or BackendOptions.from_env()).device if backend == "torch" else None)
            # --workers: the workers open the model, this process does not
            be = load_backend(model, backend, n_numbers, **({"options": options} if options else {})) \
                if workers == 1 else None
            summary = _run(cfg, out, be, quiet or not writer, puzzles, workers=workers, ranks=ranks, options=options)
    except KeyboardInterrupt:  # what is written stays (the record says how far); typer alone would say nothing
        typer.echo("error: interrupted", err=True)
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, old)
        if ranks is not None:
            ranks.close()
    if summary is None:  # a torchrun rank other than 0: its batches went to rank 0
        return
    own = f", {summary['mistakes']:,} own mistakes" if "mistakes" in summary else ""
    then = (f"`sbt train --objective dpo --prefs {out} --base-model {_model_dir(model)}` (or kto)" if labelled
            else f"`sbt train --paths {out}`")
    typer.echo(f"{out}: {summary['kept']:,} verified paths{own} from {summary['done']:,} train puzzles "
               f"({summary['kept_share']:.1%}); train on them with {then}")


def _model_dir(model: str) -> str:
    """The directory of a model name (what --base-model takes), else the name as given."""
    from sbt_core.models import resolve_model

    try:
        return str(resolve_model(model))
    except SbtError:
        return model


def _run(cfg, out: Path, be, quiet: bool, puzzles: int, **shared) -> dict | None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from harness.harvest import harvest

    err = Console(stderr=True, highlight=False)
    log = lambda m: err.print(m, markup=False, soft_wrap=True)  # noqa: E731
    if quiet:
        return harvest(cfg, out, be, log=log, lock=False, **shared)
    if not err.is_interactive:  # a log file (nohup): a line per 5% instead of a bar that never redraws
        return harvest(cfg, out, be, log=log, on_progress=_log_lines(log), lock=False, **shared)
    with Progress(TextColumn("[bold]harvest"), BarColumn(), MofNCompleteColumn(), TextColumn("puzzles"),
                  TextColumn("{task.fields[kept]:,} kept"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=err) as bar:
        task = bar.add_task("harvest", total=puzzles, kept=0)
        return harvest(cfg, out, be, log=bar.console.print, lock=False, **shared,
                       on_progress=lambda done, total, kept: bar.update(task, completed=done, total=total, kept=kept))


def _log_lines(log, parts: int = 20):
    """on_progress for a log: a line at the first batch, each time another 1/``parts`` of the
    puzzles is done, and at the end."""
    logged = None

    def on_progress(done: int, total: int, kept: int) -> None:
        nonlocal logged
        if logged is None or done - logged >= max(1, total // parts) or done == total:
            logged = done
            log(f"harvest {done:,}/{total:,} puzzles, {kept:,} kept")
    return on_progress


def register(app: typer.Typer) -> None:
    app.command("harvest")(harvest_cmd)
