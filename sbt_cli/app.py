"""Entry point: builds the Typer app and turns errors into one line and an exit code."""

from __future__ import annotations

import os
import sys

import typer

from sbt_core.errors import SbtError

app = typer.Typer(
    name="sbt",
    help="Self-backtracking language models on Countdown: solve, train, bench, watch.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

from . import data as _data  # noqa: E402
from . import solve as _solve  # noqa: E402

app.command("solve")(_solve.solve)
app.add_typer(_data.app, name="data")

for _optional in ("train", "bench", "iterate", "tui", "export"):
    try:
        __import__(f"sbt_cli.{_optional}")
    except ModuleNotFoundError as exc:
        if exc.name != f"sbt_cli.{_optional}":
            raise
    else:
        sys.modules[f"sbt_cli.{_optional}"].register(app)


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def main() -> None:
    try:
        app(standalone_mode=True)
    except SbtError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except (BrokenPipeError, OSError) as exc:
        if os.environ.get("SBT_DEBUG"):
            raise
        fail(f"{type(exc).__name__}: {exc}", 1)
    except Exception as exc:  # never a traceback for users; SBT_DEBUG=1 shows it
        if os.environ.get("SBT_DEBUG"):
            raise
        fail(f"internal error: {type(exc).__name__}: {exc} (set SBT_DEBUG=1 for the traceback)", 3)


if __name__ == "__main__":
    main()
