"""The ``sbt`` command line: thin Typer commands over the core."""


def sigterm_as_interrupt(signum, frame):  # pragma: no cover - exercised by subprocess tests
    """A SIGTERM handler (kill, a job scheduler) that a command installs while it writes, so
    that SIGTERM takes the same path as Ctrl-C: what is done is kept, exit 130."""
    raise KeyboardInterrupt
