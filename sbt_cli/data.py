"""``sbt data generate``: seeded Countdown splits as JSONL."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Optional

import typer

from sbt_cli import sigterm_as_interrupt

app = typer.Typer(help="Build Countdown puzzle splits.", no_args_is_help=True)



@app.command("generate")
def generate_cmd(
    numbers: int = typer.Option(4, "--numbers", help="how many input numbers per puzzle (3..6)"),
    train: int = typer.Option(500_000, help="training puzzles"),
    val: int = typer.Option(1_000, help="validation puzzles (seen targets)"),
    test_seen: int = typer.Option(5_000, "--test-seen", help="test puzzles with seen targets, new numbers"),
    test_new: int = typer.Option(5_000, "--test-new", help="test puzzles with held-out targets"),
    seed: int = typer.Option(0, help="seed: fixes held-out targets and every split"),
    out: Path = typer.Option(..., "--out", help="output folder"),
    workers: int = typer.Option(0, help="worker processes for a large split (0: one per core, at most 4)"),
    min_number: int = typer.Option(1, "--min-number", help="smallest input number"),
    max_number: int = typer.Option(99, "--max-number",
                                   help="largest input number (e.g. 12: an extra set of small-number puzzles)"),
    min_target: int = typer.Option(10, "--min-target", help="smallest target (TV Countdown: 100)"),
    max_target: int = typer.Option(100, "--max-target", help="largest target (TV Countdown: 999)"),
    rules: str = typer.Option("all", "--rules", help="all: every number used exactly once (the paper's game); "
                              "any: any subset of the numbers (TV Countdown: --numbers 6 --rules any "
                              "--min-target 100 --max-target 999)"),
    avoid: Optional[Path] = typer.Option(None, "--avoid",
                                         help="another data folder whose val/test puzzles must not be drawn "
                                              "(same --seed: same held-out targets)"),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="replace the splits and meta.json of a folder that already holds them"),
) -> None:
    """Generate train / val / test_seen / test_new splits (Stream-of-Search style)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sbt_core.generate import GeneratorConfig, generate

    cfg = GeneratorConfig(n_numbers=numbers, seed=seed, min_number=min_number, max_number=max_number,
                          min_target=min_target, max_target=max_target, rules=rules,
                          sizes={"train": train, "val": val, "test_seen": test_seen, "test_new": test_new})
    # the bars start with the first puzzles: a refusal is the only line a user sees
    bar = Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), transient=False)
    tasks: dict[str, int] = {}

    def progress(split: str, done: int, total: int) -> None:
        if not tasks:
            bar.start()
        if split not in tasks:
            tasks[split] = bar.add_task(split, total=total)
        bar.update(tasks[split], completed=done)

    # SIGTERM stops the run as Ctrl-C does: workers stopped, temporary files removed, old files kept
    old = signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    written = None
    try:
        written = generate(cfg, out, workers=workers, progress=progress, avoid=avoid, overwrite=overwrite)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        if tasks:
            bar.stop()
    if written is None:  # interrupted (typer alone would exit 130 without a word)
        typer.echo("error: interrupted", err=True)
        raise typer.Exit(130)
    typer.echo(f"wrote {', '.join(f'{k}={v:,}' for k, v in written.items())} to {out}")
