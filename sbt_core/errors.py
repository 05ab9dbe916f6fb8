"""Errors that front ends turn into one clear line and an exit code."""


class SbtError(Exception):
    """A user-facing error: its message is shown as is, without a traceback."""

    exit_code = 2


class PuzzleError(SbtError, ValueError):
    """The text of a puzzle could not be read."""


class NoSolutionError(SbtError):
    """A well-formed puzzle has no solution."""

    exit_code = 1
