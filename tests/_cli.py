"""Helpers for testing commands through Typer's CliRunner."""

from __future__ import annotations


def one_error_line(result, *needles: str, code: int = 2) -> str:
    """The command exited ``code`` and wrote exactly one line, ``error: ...``, holding every
    needle: nothing else on stderr or stdout, no traceback. Returns the line."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and "internal error" not in lines[0], result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
