"""``sbt bench``: run a methods x params x models matrix into the results store;
``sbt bench report``: the leaderboard, scaling curves and exports."""

from __future__ import annotations

import signal
import sqlite3
import sys
from pathlib import Path
from typing import List, Optional

import typer

from sbt_cli import sigterm_as_interrupt

from sbt_core.errors import SbtError
from sbt_cli.options import Device, Dtype, Quant, Threads

app = typer.Typer(help="Benchmark search methods into a SQLite results store; `sbt bench report` shows it.",
                  no_args_is_help=False)

DB_HELP = "results database (default: $SBT_DB, else results.db at the repository root)"


def _default_models(split: str, puzzles: Optional[Path], data: Optional[Path], numbers: Optional[int],
                    rules: Optional[str]) -> list[str]:
    """Without --model: the model trained for the puzzles' size and rules (``default_model``;
    none: one line naming the models there and --method exact), so that no model answers
    puzzles of a size or rules it was not trained for, and a run records that model's
    search defaults. [] where that is the default model of ``--numbers`` (else 4), as always."""
    from harness.runner import load_source
    from sbt_core.models import default_model

    legacy = numbers or 4  # the size whose default model a run without --model opens
    try:
        source = load_source(None if puzzles else split, puzzles, data, legacy, rules)
    except SbtError:  # the preflight reports an unreadable puzzle file, in its order
        return []
    sizes = {len(p.numbers) for p in source.puzzles}
    if len(sizes) != 1 or (source.rules == "all" and sizes == {legacy}):
        return []
    return [default_model(sizes.pop(), source.rules)]


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="bench")



@app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    split: str = typer.Option("test_new", "--split", help="split of --data to run: test_new | test_seen | val"),
    puzzles: Optional[Path] = typer.Option(None, "--puzzles", help="a JSONL file of puzzles (numbers, target) instead of a split"),
    data: Optional[Path] = typer.Option(None, "--data", help="data folder with <split>.jsonl (default: data/countdown<N>, N from the model or --numbers)"),
    methods: str = typer.Option("greedy,best-of-n,self-backtrack", "--methods", "-m", help="comma list of `sbt solve --method` names"),
    n: str = typer.Option("8,16,32", "--n", help="comma list: samples per expansion (methods that take n)"),
    b: str = typer.Option("0,1", "--b", help="comma list: backtracking budgets (self-backtracking only)"),
    model: Optional[str] = typer.Option(None, "--model", help="comma list of model names or directories (default: the shipped model)"),
    backend: str = typer.Option("torch", "--backend", help="torch | llama"),
    dtype: Dtype = None,
    device: Device = None,
    threads: Threads = None,
    quant: Quant = None,
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="only the first LIMIT puzzles"),
    seed: int = typer.Option(0, "--seed", help="run seed (puzzle i is searched with a seed derived from it and i)"),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="sampling temperature (default: the model's search_defaults.json, else each method's own, 0.7; 0: greedy)"),
    param: List[str] = typer.Option([], "--param", "-p", help="KEY=V1,V2: another method parameter to vary, e.g. width=2,4 or nodes=32,64 (repeatable)"),
    numbers: Optional[int] = typer.Option(None, "--numbers", min=3, max=6, help="input numbers per puzzle (default: from the model name, else from --puzzles, else 4)"),
    rules: Optional[str] = typer.Option(None, "--rules", help="all | any: the rules of puzzles whose lines name none "
                                        "(default all; any: any subset of the numbers, TV Countdown); stored with each run"),
    trace: bool = typer.Option(True, "--trace/--no-trace", help="store each puzzle's event trace"),
    workers: int = typer.Option(1, "--workers", help="worker processes, each with its own copy of the model on one "
                                "thread (1-64; default 1: this process). Same rows as 1 worker"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Run every method x params x model on a split (or a puzzle file) and store the results.

    Re-running the same command continues where it stopped (finished puzzles are not
    redone). Ctrl-C marks the current run interrupted, keeps its results, exits 130.
    Under torchrun the ranks share the puzzles; rank 0 writes the results database.
    """
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console

    from harness.report import build_report
    from harness.runner import (Bench, BenchInterrupted, NullObserver, infer_numbers, parse_list,
                                parse_param_options, plan_matrix, puzzles_numbers)
    from sbt_cli.views import RichProgress, render, stdout_console
    from harness.store import open_store
    from harness.workers import Ranks, agreed, check_workers
    from sbt_core.settings import backend_options

    check_workers(workers)
    if rules is not None:
        from sbt_core.countdown import check_rules

        check_rules(rules)
    options = backend_options(backend, dtype=dtype, device=device, threads=threads, quant=quant)
    ranks = Ranks.from_env()  # torchrun: this process's rank (None: alone)
    method_list = parse_list(methods, str, "--methods")
    if not method_list:
        raise SbtError("--methods is empty")
    from sbt_core.models import search_defaults
    from sbt_core.search import METHODS, defaults_name

    model_list = parse_list(model, str, "--model")
    if puzzles is not None and numbers is None and not model_list and any(
            METHODS[m].needs_model for m in method_list if m in METHODS):
        numbers = puzzles_numbers(puzzles, rules)  # the default model for the puzzles' size, as `sbt solve`
    if not model_list and any(METHODS[m].needs_model for m in method_list if m in METHODS):
        model_list = _default_models(split, puzzles, data, numbers, rules)
    specs = plan_matrix(method_list, parse_list(n, int, "--n"), parse_list(b, int, "--b"),
                        model_list or [None], temperature, parse_param_options(param),
                        model_defaults=lambda m: search_defaults(m, numbers or infer_numbers(m)),
                        model_defaults_name=lambda m: defaults_name(m, numbers or infer_numbers(m)))
    err = Console(stderr=True, highlight=False)
    writer = ranks is None or ranks.writer  # under torchrun, rank 0 writes, shows and reports
    progress = RichProgress(err, n_runs=len(specs)) if not quiet and writer else None
    bench = Bench(None, specs, split=None if puzzles else split, puzzles_file=puzzles, data=data,  # type: ignore[arg-type]
                  n_numbers=numbers, backend=backend, limit=limit, seed=seed, trace=trace,
                  observer=progress or NullObserver(), options=options, workers=workers, ranks=ranks, rules=rules)
    bench.preflight()  # puzzle files and models resolve before anything is written or shown
    store = None
    if ranks is not None:
        from sbt_core.settings import BackendOptions

        ranks.start((options or BackendOptions.from_env()).device if backend == "torch" else None)

    def open_db() -> None:
        nonlocal store
        store = bench.store = open_store(db)

    try:
        agreed(ranks, open_db)  # rank 0's store; its error is every rank's
    except BaseException:
        if ranks is not None:
            ranks.close()
        raise
    old = signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    try:
        try:
            if progress:
                with progress:
                    outcomes = bench.run()
            else:
                outcomes = bench.run()
        except BenchInterrupted as exc:
            err.print(f"interrupted: run #{exc.run_id} stopped at {exc.done}/{exc.total}; results kept in "
                      f"{store.path or ':memory:'}. Re-run the same command to continue.")
            raise typer.Exit(130)
        except KeyboardInterrupt:  # a torchrun rank other than 0 (typer alone would say nothing)
            typer.echo("error: interrupted", err=True)
            raise typer.Exit(130) from None
        except sqlite3.DatabaseError as exc:
            raise SbtError(f"results database {store.path}: {exc}") from None
        if store is None:  # a torchrun rank other than 0: its share went to rank 0
            return
        report = build_report(store, run_ids=[o.run_id for o in outcomes])
        render(report, stdout_console(), with_paper=False, with_curves=False, with_failures=False)
        unfinished = [o for o in outcomes if o.status != "done"]
        if unfinished:
            err.print(f"{len(unfinished)} run(s) still have puzzles being written by another bench.")
    finally:
        signal.signal(signal.SIGTERM, old)
        if store is not None:
            store.close()
        if ranks is not None:
            ranks.close()


@app.command("report")
def report_cmd(
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
    split: Optional[str] = typer.Option(None, "--split", help="only this split (or puzzle file name)"),
    model: Optional[str] = typer.Option(None, "--model", help="only this model (name or sha256 prefix)"),
    methods: Optional[str] = typer.Option(None, "--methods", "-m", help="only these methods (comma list)"),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="table | json | csv | markdown (default: table, or from --out's suffix)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the report to this file instead of stdout"),
    plot: List[Path] = typer.Option([], "--plot", help="save the scaling curves to this .png / .svg (repeatable)"),
    compute_plot: List[Path] = typer.Option([], "--compute-plot", help="save accuracy against generated tokens per "
                                            "puzzle, every run (equal compute), to this .png / .svg (repeatable)"),
    paper_block: bool = typer.Option(True, "--paper/--no-paper", help="show the paper's reported numbers (labelled block)"),
    curves: bool = typer.Option(True, "--curves/--no-curves", help="draw the scaling curves in the terminal"),
    width: Optional[int] = typer.Option(None, "--width", min=40, help="width of terminal plots"),
    all_weights: bool = typer.Option(False, "--all-weights", help="scaling curves of superseded checkpoints "
                                     "(NAME@SHA8) too, not only of the weights now shipped"),
) -> None:
    """Leaderboard (accuracy with 95% Wilson interval, tokens, seconds and backtracks per puzzle),
    failure categories, test-time scaling curves, and the paper's reference numbers."""
    from harness.report import FORMATS, build_report, export, format_from_suffix
    from sbt_cli.views import render, render_text, save_compute_plot, save_plots, stdout_console
    from sbt_core.files import write_atomic
    from harness.runner import parse_list
    from harness.store import default_db_path, read_only

    if fmt is None:
        fmt = (format_from_suffix(out) if out else None) or "table"
        if out and format_from_suffix(out) is None:
            raise SbtError(f"--out {out}: cannot tell the format from its suffix; pass --format {'|'.join(FORMATS)}")
    if fmt not in FORMATS:
        raise SbtError(f"unknown --format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    figures = [*((p, "--plot") for p in plot), *((p, "--compute-plot") for p in compute_plot)]
    for p, flag in figures:
        if p.suffix.lower() not in (".png", ".svg", ".pdf"):
            raise SbtError(f"{flag} {p}: use a .png or .svg file name")
    db = db if db is not None else default_db_path()
    for target, flag in [(out, "--out"), *figures]:
        if target is not None and Path(target).resolve() == db.resolve():
            raise SbtError(f"{flag} {target} is the results database itself; choose another file")
    method_list = parse_list(methods, str, "--methods") or None
    report = read_only(db, lambda store: build_report(store, all_weights=all_weights, split=split, model=model,
                                                      methods=method_list))
    if fmt == "table":
        if out:
            write_atomic(out, render_text(report, with_paper=paper_block, with_curves=curves, plot_width=width))
        else:
            render(report, stdout_console(), with_paper=paper_block, with_curves=curves, plot_width=width)
    else:
        text = export(report, fmt, with_paper=paper_block)
        if out:
            write_atomic(out, text)
        else:
            sys.stdout.write(text)
    if plot:
        written = save_plots(report.curves, plot, with_paper=paper_block)
        msg = (f"saved scaling curves to {', '.join(map(str, written))}" if written
               else "no scaling curves to plot (needs runs at two or more values of n or b)")
        typer.echo(msg, err=True)
    if compute_plot:
        shown = [r for r in report.rows if all_weights or not r.superseded]
        written = save_compute_plot(shown, compute_plot)
        typer.echo(f"saved accuracy vs generated tokens to {', '.join(map(str, written))}" if written
                   else "no runs with generated tokens to plot", err=True)
    if out:
        typer.echo(f"wrote {fmt} report to {out}", err=True)


@app.command("runs")
def runs_cmd(
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """List the runs in the results database: identity, progress and status."""
    from rich.markup import escape
    from rich.table import Table

    from harness.report import effective_status
    from harness.runner import format_label
    from harness.store import decode, read_only
    from sbt_core.settings import format_options

    def table(store) -> Table:
        counts = store.result_counts()
        t = Table(title=f"Runs — {escape(str(store.path))}", title_justify="left", header_style="bold")
        for h in ("id", "method", "model", "split", "seed", "done", "solved", "status", "started", "git"):
            t.add_column(h, justify="right" if h in ("id", "seed", "done", "solved") else "left",
                         no_wrap=h in ("method", "done", "started"))
        for r in store.runs():
            n, k = counts.get(r["id"], (0, 0))
            row = decode(r)
            params = row["params"] if isinstance(row["params"], dict) else {}
            options = row.get("backend_options")  # (absent from a database no bench has migrated yet)
            label = " ".join(filter(None, [format_label(r["method"], params),
                                           format_options(options if isinstance(options, dict) else None)]))
            cells = [str(r["id"]), label, r["model"] or "-",
                     r["split"] or Path(r["puzzles"] or "?").name, str(r["seed"]), f"{n}/{r['n_puzzles'] or '?'}",
                     str(k), effective_status(r), (r["started"] or "")[:16].replace("T", " "), (r["git_sha"] or "")[:8]]
            t.add_row(*(escape(str(c)) for c in cells))  # stored strings are text, never Rich markup
        return t

    from sbt_cli.views import stdout_console

    stdout_console().print(read_only(db, table))


@app.command("compare")
def compare_cmd(
    run_a: str = typer.Argument(..., help="a run id, or its label as `sbt bench runs` shows it (LABEL@MODEL if several)"),
    run_b: str = typer.Argument(..., help="the other run"),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
    fmt: str = typer.Option("table", "--format", "-f", help="table | json"),
) -> None:
    """Two runs on their shared puzzles: accuracy of each, the difference with a 95% interval,
    and the exact McNemar p-value."""
    from rich.markup import escape

    from harness.compare import compare
    from harness.store import read_only
    from sbt_core.files import strict_json

    if fmt not in ("table", "json"):
        raise SbtError(f"--format must be table or json, got {fmt!r}")
    c = read_only(db, lambda store: compare(store, run_a, run_b))
    if fmt == "json":
        typer.echo(strict_json(c.to_json()))
        return
    from sbt_cli.views import stdout_console

    out = stdout_console()
    for tag, run in (("A", c.run_a), ("B", c.run_b)):
        out.print(escape(f"{tag}: run #{run['id']} {run['label']} · {run['model'] or '-'} · {run['split']}"))
    if not c.n:
        out.print("no shared puzzles: the two runs solved different puzzle sets")
        return
    out.print(f"shared puzzles {c.n:,}: A {c.a:.1%}, B {c.b:.1%}; A - B {100 * c.diff:+.1f} points "
              f"(95% CI {100 * c.ci_low:+.1f} to {100 * c.ci_high:+.1f}); solved by both {c.both:,}, "
              f"A only {c.only_a:,}, B only {c.only_b:,}, neither {c.neither:,}; McNemar exact p = {c.p_value:.3g}")
