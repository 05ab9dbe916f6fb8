"""``sbt solve PUZZLE``: solve one Countdown puzzle, show the search, verify the answer."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console

from sbt_core.countdown import expression, parse_puzzle, parse_step
from sbt_core.errors import SbtError
from sbt_core.search import METHODS
from sbt_core.search.events import Done


def solve(
    puzzle: str = typer.Argument(..., help='the puzzle, e.g. "2 3 5 -> 30"'),
    method: str = typer.Option("exact", "--method", "-m", help="|".join(METHODS)),
    model: Optional[str] = typer.Option(None, "--model", help="model name or directory"),
    backend: str = typer.Option("torch", "--backend", help="torch|llama"),
    n: int = typer.Option(16, "--n", help="samples per expansion"),
    b: int = typer.Option(1, "--b", help="backtracking budget (rounds of re-expansion)"),
    temperature: float = typer.Option(0.7, "--temperature", help="sampling temperature"),
    seed: int = typer.Option(0, "--seed", help="random seed (same seed, same output)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    trace: bool = typer.Option(False, "--trace", help="with --json: include the event stream"),
) -> None:
    """Solve a Countdown puzzle and verify the answer with the strict verifier."""
    p = parse_puzzle(puzzle)
    if method not in METHODS:
        raise SbtError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    spec = METHODS[method]
    params = {"n": n, "b": b, "temperature": temperature}
    engine = None
    if spec.needs_model:
        raise SbtError(f"method {method!r} needs a trained model, which this build does not have yet")
    events = []
    result = None
    for event in spec.run(p, engine, params, seed):
        events.append(event)
        if isinstance(event, Done):
            result = event.result
    assert result is not None
    if as_json:
        out = result.to_json()
        if trace:
            out["trace"] = [e.to_json() for e in events]
        typer.echo(json.dumps(out))
    else:
        console = Console(highlight=False)
        console.print(f"[bold]{p}[/]  method: {method}")
        for line in result.lines:
            console.print(f"  {line}")
        if result.solved:
            console.print(f"[green]✓ {expression(p, [parse_step(x) for x in result.lines])}[/]")
        else:
            console.print(f"[red]✗ no verified answer: {result.verdict.describe()}[/]")
    if not result.solved:
        raise typer.Exit(1)
