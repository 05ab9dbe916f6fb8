"""Colours shared by the widgets (rich styles; the .tcss file styles the containers)."""

BASE = "#7aa2f7"  # an input number
MADE = "#bb9af7"  # the result of an earlier step
NEW = "bold #9ece6a"  # the result of the step just taken
GOOD = "#9ece6a"
BAD = "#f7768e"
BACK = "#e0af68"  # rollback
DIM = "#737aa2"
ACCENT = "#7dcfff"
TEXT = "#c0caf5"

MERGING = "bold #7dcfff"  # two tiles about to merge

TAG_STYLE = {"base": BASE, "made": MADE, "new": NEW, "wrong": BAD, "back": BACK, "merging": MERGING}


def signed(x: float | None, digits: int = 3) -> str:
    """A log-prob with a real minus sign."""
    if x is None:
        return "—"
    return f"{x:.{digits}f}".replace("-", "−")
