"""``sbt tui [PUZZLE]``: the Textual app that animates a search (see docs/tui.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sbt_cli.options import Device, Dtype, Quant, Threads


def tui(
    puzzle: Optional[str] = typer.Argument(None, help='the puzzle, e.g. "25 5 2 7 -> 92" (optional)'),
    method: str = typer.Option("self-backtrack", "--method", "-m", help="search method (or `demo`: simulated, no model)"),
    model: Optional[str] = typer.Option(None, "--model", help="model name or directory"),
    rules: str = typer.Option("all", "--rules", help="all: every number used exactly once (the paper's rules); "
                              "any: any subset (TV Countdown)"),
    backend: str = typer.Option("torch", "--backend", help="torch|llama|scripted"),
    dtype: Dtype = None,
    device: Device = None,
    threads: Threads = None,
    quant: Quant = None,
    n: Optional[int] = typer.Option(None, "--n", help="samples per expansion (default: sbt solve's, 16)"),
    b: Optional[int] = typer.Option(None, "--b", help="backtracking budget, rounds of re-expansion (default: sbt solve's, 1)"),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="sampling temperature (default: what "
                                                "the model for each puzzle recommends in search_defaults.json, else 0.7)"),
    seed: int = typer.Option(0, "--seed", help="random seed"),
    split: str = typer.Option("test_new", "--split", help="split for random puzzles (data/*/SPLIT.jsonl)"),
    speed: int = typer.Option(16, "--speed", help="playback frames per second (0: instant)"),
    trace: Optional[Path] = typer.Option(None, "--trace", help="replay a trace: `sbt solve --json --trace` output"),
    db: Optional[Path] = typer.Option(None, "--db", help="results database for stored traces (default results.db)"),
) -> None:
    """Watch a search think: steps, <backtrack>, rollback, candidates and the verdict."""
    from tui.app import SPEEDS, SbtApp
    from tui.sources import Settings, load_trace_file

    from sbt_core.errors import SbtError
    from sbt_core.search.common import resolve_params
    from sbt_core.settings import backend_options

    if speed not in SPEEDS:
        raise SbtError(f"--speed must be one of {', '.join(map(str, SPEEDS))}")
    from sbt_core.countdown import check_rules

    check_rules(rules)
    # the budgets and the temperature get the checks of `sbt solve` (sbt_core.limits) before the app starts
    resolve_params({}, {"n": n, "b": b, "temperature": temperature}, names=["--{flag}"])
    # a puzzle that cannot be read opens the app with it in the box and the error under it
    loaded = load_trace_file(trace) if trace is not None else None
    options = backend_options(backend, dtype=dtype, device=device, threads=threads, quant=quant)
    budgets = {k: v for k, v in (("n", n), ("b", b)) if v is not None}  # unset: the defaults of sbt solve
    settings = Settings(method=method, **budgets, temperature=temperature, seed=seed, model=model,  # None: per puzzle
                        backend=backend, split=split, options=options, rules=rules)
    SbtApp(puzzle, settings, trace=loaded, speed=speed, db=db).run()


def register(app: typer.Typer) -> None:
    app.command("tui")(tui)
