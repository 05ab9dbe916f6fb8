"""The ``sbt`` command line: thin Typer commands over the core."""


def sigterm_as_interrupt(signum, frame):  # pragma: no cover - exercised by subprocess tests
    """A SIGTERM handler (kill, a job scheduler) that a command installs while it writes, so
    that SIGTERM takes the same path as Ctrl-C: what is done is kept, exit 130."""
    raise KeyboardInterrupt


def option_given(ctx, param: str) -> bool:
    """Whether the option ``param`` was given on the command line (or by its environment
    variable), not left at its default. Compared by name: typer ships its own copy of click,
    whose ``ParameterSource`` is not ``click.core.ParameterSource``."""
    source = ctx.get_parameter_source(param)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
