"""``sbt solve PUZZLE``: solve one Countdown puzzle, show the search, verify the answer."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console

from sbt_core.countdown import RULES_HELP, parse_puzzle
from sbt_core import engine as core
from sbt_core.errors import NoSolutionError, SbtError
from sbt_core.models import default_model
from sbt_core.search import METHODS
from sbt_core.solver import is_solvable
from sbt_core.settings import backend_options
from sbt_cli.options import Device, Dtype, Quant, Threads

DEFAULT_METHOD = "self-backtrack"


def solve(
    puzzle: str = typer.Argument(..., help='the puzzle, e.g. "2 3 5 -> 30"'),
    method: str = typer.Option(DEFAULT_METHOD, "--method", "-m", help="|".join(METHODS)),
    model: Optional[str] = typer.Option(None, "--model", help="model name (in models/) or directory; "
                                        "default: countdown4-backtrack (countdown3-backtrack for 3 numbers; "
                                        "other sizes and --rules any: a model trained for them, if any)"),
    rules: str = typer.Option("all", "--rules", help=RULES_HELP),
    backend: str = typer.Option("torch", "--backend", help="torch|llama"),
    dtype: Dtype = None,
    device: Device = None,
    threads: Threads = None,
    quant: Quant = None,
    n: Optional[int] = typer.Option(None, "--n", help="samples per expansion (default 16; dfs: 4)"),
    b: Optional[int] = typer.Option(None, "--b", help="self-backtrack: rounds of re-expansion (default 1)"),
    width: Optional[int] = typer.Option(None, "--width", help="beam: beam width (default 4)"),
    nodes: Optional[int] = typer.Option(None, "--nodes", help="dfs: node budget (default 32)"),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="sampling temperature (default: the model's search_defaults.json, else 0.7)"),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="sample from the k most likely tokens (0: all)"),
    seed: int = typer.Option(0, "--seed", help="random seed (same seed, same output)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    trace: bool = typer.Option(False, "--trace", help="with --json: include the event stream"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="every sample, backtrack and candidate as it comes "
                                 "(default: one line per expanded state)"),
) -> None:
    """Solve a Countdown puzzle and verify the answer with the strict verifier."""
    try:
        options = backend_options(backend, dtype=dtype, device=device, threads=threads, quant=quant)
        _solve(puzzle, method, model, backend, {"n": n, "b": b, "width": width, "nodes": nodes,
                                                 "temperature": temperature, "top_k": top_k},
               seed, as_json, trace, options, rules, verbose)
    except SbtError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


def _backend_has_models(name: str) -> bool:
    """Whether backend ``name`` opens models (an unknown name: opening it says so, later)."""
    from sbt_core.backends import BACKENDS

    spec = BACKENDS.get(name)
    return spec is None or spec.needs_model


def _solve(text: str, method: str, model: str | None, backend_name: str, given: dict, seed: int,
           as_json: bool, trace: bool, options=None, rules: str = "all", verbose: bool = False) -> None:
    p = parse_puzzle(text, rules)
    if method not in METHODS:
        raise SbtError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    spec = METHODS[method]
    if spec.needs_model and model is None and _backend_has_models(backend_name):
        # the model trained for this size and these rules; none: one line naming the models there
        model = default_model(len(p.numbers), p.rules)
    engine = core.Engine(model, backend_name, len(p.numbers), options)  # nothing loads yet
    # the method's defaults, the model's search_defaults.json, the flags: every value is
    # checked against the documented limits before any model loads
    params = engine.params(method, given, names=("--{flag}",))
    if spec.needs_model:
        if not is_solvable(p.numbers, p.target, p.rules):  # no search can verify; say so instead of searching
            how = "combining the numbers" if p.uses_all else "combining any of the numbers"
            raise NoSolutionError(f"{p} has no solution: no way of {how} reaches {p.target} "
                                  "(checked by the exact solver)")
        backend = engine.backend  # resolves and opens the model
    else:
        backend = None
    console = Console(highlight=False)
    view = None
    if not as_json:
        from .solve_view import CompactView, SearchView

        where = f"  {backend.model_name} ({backend.backend_name})" if backend else ""
        shown = " ".join(f"{'T' if k == 'temperature' else k}={v}" for k, v in params.items()
                         if k in ("n", "b", "width", "nodes", "temperature"))
        head = f"{p}" if p.uses_all else f"{p} (rules {p.rules})"
        console.print(f"[bold]{head}[/]  {' '.join(filter(None, (method, shown)))}{where}")
        view = SearchView(console) if verbose else CompactView(console)
    result, events = core.solve(backend, method, p, params, seed, keep_events=trace, on_event=view)
    if as_json:
        out = result.to_json()
        if backend is not None:
            out["model"] = backend.model_name
            out["backend"] = backend.backend_name
        if trace:
            out["trace"] = [e.to_json() for e in events]
        typer.echo(json.dumps(out))
    if not result.solved:
        raise typer.Exit(1)
