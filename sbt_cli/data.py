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
    avoid: Optional[list[Path]] = typer.Option(None, "--avoid",
                                               help="a data folder whose val/test puzzles must not be drawn "
                                                    "(same --seed: same held-out targets), or a puzzle file "
                                                    "(e.g. data/countdown3/small12.jsonl) none of whose puzzles "
                                                    "may be drawn; repeat for several"),
    number_dist: str = typer.Option("uniform", "--number-dist",
                                    help="how train numbers are drawn from --min-number..--max-number: uniform "
                                         "(the paper's) or loguniform (P(k) ~ 1/k: small numbers common); val "
                                         "and test stay the paper's"),
    small_share: float = typer.Option(0.0, "--small-share",
                                      help="share of train puzzles (0..1) whose numbers are ALL drawn uniformly "
                                           "from --min-number..--small-max (the small-number puzzles people type)"),
    small_max: int = typer.Option(13, "--small-max", help="largest number of a --small-share puzzle"),
    hold_out_24: bool = typer.Option(True, "--hold-out-24/--no-hold-out-24",
                                     help="keep the 24 game (target 24, every number <= 13) out of train: it is "
                                          "the test set data/countdown4/game24.jsonl"),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="replace the splits and meta.json of a folder that already holds them"),
) -> None:
    """Generate train / val / test_seen / test_new splits (Stream-of-Search style)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sbt_core.generate import GeneratorConfig, generate

    cfg = GeneratorConfig(n_numbers=numbers, seed=seed, min_number=min_number, max_number=max_number,
                          min_target=min_target, max_target=max_target, rules=rules,
                          number_dist=number_dist, small_share=small_share, small_max=small_max,
                          hold_out_24=hold_out_24,
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
        written = generate(cfg, out, workers=workers, progress=progress, avoid=avoid or None, overwrite=overwrite)
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
    if not cfg.default_draws:  # the share that came out, as meta.json records it
        import json

        small = json.loads((out / "meta.json").read_text()).get("small_written", {})
        if written.get("train"):
            k = small.get("train", 0)
            typer.echo(f"train puzzles with every number <= {cfg.small_max}: {k:,} ({k / written['train']:.1%})")


@app.command("testset")
def testset_cmd(
    out: Path = typer.Option(..., "--out", help="the puzzle file to write (NAME.jsonl: ids NAME-000000, ...)"),
    numbers: int = typer.Option(4, "--numbers", help="how many input numbers per puzzle (3..6)"),
    min_number: int = typer.Option(1, "--min-number", help="smallest input number"),
    max_number: int = typer.Option(13, "--max-number", help="largest input number"),
    min_target: int = typer.Option(10, "--min-target", help="smallest target"),
    max_target: int = typer.Option(100, "--max-target", help="largest target"),
    every: bool = typer.Option(False, "--all", help="every solvable (number set, target) of the ranges, sorted "
                               "(the 24 game: --numbers 4 --max-number 13 --min-target 24 --max-target 24)"),
    count: Optional[int] = typer.Option(None, "--count", help="this many distinct solvable puzzles, drawn at random "
                                        "(targets uniform over the whole range, no held-out targets)"),
    seed: int = typer.Option(0, help="seed of --count"),
    rules: str = typer.Option("all", "--rules", help="all: every number used exactly once; any: any subset"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing file"),
) -> None:
    """Write one extra test file: every puzzle of a small range (--all) or a seeded sample (--count)."""
    from sbt_core.errors import SbtError
    from sbt_core.generate import GeneratorConfig, testset_rows, write_testset

    if every == (count is not None):
        raise SbtError("give exactly one of --all (every solvable puzzle) and --count N (a seeded sample)")
    if out.is_dir():
        raise SbtError(f"--out {out} is a folder; name a .jsonl file")
    if out.suffix != ".jsonl" or not out.stem:
        raise SbtError(f"--out must name a .jsonl file (its name is the puzzles' split), got {str(out)[:60]!r}")
    if out.exists() and not overwrite:  # refused before any work (write_testset checks again under the lock)
        raise SbtError(f"--out {out} already exists; add --overwrite to replace it, or choose another file")
    cfg = GeneratorConfig(n_numbers=numbers, seed=seed, min_number=min_number, max_number=max_number,
                          min_target=min_target, max_target=max_target, rules=rules, sizes={})
    old = signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    try:
        rows = testset_rows(cfg, out.stem, count)
        write_testset(out, rows, overwrite=overwrite)
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, old)
    typer.echo(f"wrote {len(rows):,} puzzles to {out}")
