"""Entry point: builds the Typer app and turns errors into one line and an exit code."""

from __future__ import annotations

import os
import re
import sys

import typer
from typer.core import TyperGroup

from sbt_core import settings
from sbt_core.errors import SbtError

_OPTION_NAME = re.compile(r"--?[A-Za-z][\w-]*(=.*)?", re.S)


def _one_line(message: str) -> str:
    return " ".join(str(message).split()) or "unknown error"


def _fail(message: str, code: int):
    typer.echo(f"error: {_one_line(message)}", err=True)
    sys.exit(code)


def _value_options(cmd) -> set[str]:
    """The option names of ``cmd`` that take a value (``--n``, ``-m``), not flags."""
    return {o for p in getattr(cmd, "params", ()) if getattr(p, "param_type_name", "") == "option"
            and not getattr(p, "is_flag", False) for o in (*p.opts, *p.secondary_opts)}


def _option_names(cmd) -> set[str]:
    return {o for p in getattr(cmd, "params", ()) for o in (*p.opts, *p.secondary_opts)} | {"--help"}


class SbtGroup(TyperGroup):
    """The root command: every error becomes ONE line on stderr and an exit code.

    Handled here (not only in ``main``) so that ``CliRunner().invoke(app, ...)`` sees exactly
    what a user sees: usage errors and SbtError exit 2 (NoSolutionError 1), Ctrl-C 130,
    anything unexpected 3; never a traceback unless SBT_DEBUG is set.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = self._puzzle_args(list(sys.argv[1:] if args is None else args))
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
        except SbtError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Exception as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # help was already printed
                sys.exit(getattr(exc, "exit_code", 2))
            if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click usage errors
                hint = ""
                if any(c.__name__ == "UsageError" for c in type(exc).__mro__):
                    ctx = getattr(exc, "ctx", None)
                    words = ctx.command_path.split()[1:] if ctx is not None else []
                    walked = self._command_words(args)  # click may name only a parent's context
                    if walked[:len(words)] == words:
                        words = walked
                    hint = f" (see '{' '.join(['sbt', *words])} --help')"
                _fail(exc.format_message() + hint, exc.exit_code)
            if type(exc).__name__ == "Abort":
                _fail("aborted", 1)
            if settings.debug():
                raise
            if isinstance(exc, OSError):
                _fail(f"{type(exc).__name__}: {exc}", 1)
            _fail(f"internal error: {type(exc).__name__}: {exc} (set SBT_DEBUG=1 for the traceback)", 3)
        # non-standalone click returns the code of a typer.Exit, else the command's return value
        code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
        if standalone_mode:
            sys.exit(code)
        return rv

    def _command_words(self, args: list[str]) -> list[str]:
        """The subcommand names in ``args`` (``["bench", "report"]``): the command a usage
        error belongs to when click raises it without a context (an option given without
        its value, e.g. ``sbt solve --n``)."""
        words: list[str] = []
        cmd, takes_value = self, _value_options(self)
        for i, tok in enumerate(args):
            if tok == "--" or not hasattr(cmd, "commands"):  # a command, not a group: done
                break
            if i and args[i - 1] in takes_value:
                continue
            if tok.startswith("-"):
                if tok.split("=", 1)[0] not in _option_names(cmd):  # the error is this group's
                    break
                continue
            sub = cmd.commands.get(tok)
            if sub is None:
                break
            words.append(tok)
            cmd, takes_value = sub, _value_options(sub)
        return words

    def _puzzle_args(self, args: list[str]) -> list[str]:
        """``sbt solve "-1 2 -> 3"``: a puzzle that starts with '-' is not an option.

        Such an argument is moved behind ``--`` so that the puzzle parser, not the option
        parser, reports what is wrong with it (here: a negative number).
        """
        if not args or args[0] != "solve" or "--" in args:
            return args
        takes_value = _value_options(self.commands.get("solve"))
        for i in range(1, len(args)):
            tok = args[i]
            if args[i - 1] in takes_value:
                continue
            if tok.startswith("-") and tok != "-" and not _OPTION_NAME.fullmatch(tok):
                return [*args[:i], *args[i + 1:], "--", tok]
        return args


app = typer.Typer(
    cls=SbtGroup,
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

for _optional in ("train", "harvest", "bench", "iterate", "tui", "export"):
    try:
        __import__(f"sbt_cli.{_optional}")
    except ModuleNotFoundError as exc:
        if exc.name != f"sbt_cli.{_optional}":
            raise
    else:
        sys.modules[f"sbt_cli.{_optional}"].register(app)


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {_one_line(message)}", err=True)
    raise SystemExit(code)


# read-only commands: once their output is flushed nothing is left to do, so they skip the
# interpreter's teardown (about 1 s with torch loaded on a 2-core machine)
NO_TEARDOWN = ("solve",)


def _exit_now(code) -> None:
    """``sys.exit(code)`` without the teardown: flush, then ``os._exit``."""
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be written anyway
            pass
    os._exit(code or 0)


def main() -> None:
    no_teardown = sys.argv[1:2] and sys.argv[1] in NO_TEARDOWN
    try:
        _main()
    except SystemExit as exc:
        if no_teardown:
            _exit_now(exc.code)
        raise
    if no_teardown:
        _exit_now(0)


def _main() -> None:
    # SbtGroup.main turns errors into one line; this is a safety net around it
    try:
        app(standalone_mode=True)
    except SbtError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except (BrokenPipeError, OSError) as exc:
        if settings.debug():
            raise
        fail(f"{type(exc).__name__}: {exc}", 1)
    except Exception as exc:  # never a traceback for users; SBT_DEBUG=1 shows it
        if settings.debug():
            raise
        fail(f"internal error: {type(exc).__name__}: {exc} (set SBT_DEBUG=1 for the traceback)", 3)


if __name__ == "__main__":
    main()
