"""The puzzle panel: numbers as tiles that merge as steps apply, and the target."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual.widgets import Static

from sbt_core.countdown import Puzzle, parse_step

from ..state import Board, Focus, Tile, board
from . import palette as P

CAPTION = {
    "idle": "",
    "step": "",
    "goal": "the model says: Goal Reached!",
    "backtrack": "the model says: <backtrack>",
    "undo": "⟲ dropping the wrong step",
    "rollback": "↩ back at the parent state",
    "final": "selected answer",
}


def _tile_rows(tiles: list[Tile], target: int | None, width: int, reached: bool | None) -> list[Text]:
    """Three text rows per line of tiles; wraps when the tiles do not fit."""
    boxes: list[tuple[list[Text], int]] = []
    for t in tiles:
        style = P.TAG_STYLE.get(t.tag, P.BASE)
        s = str(t.value)
        num_style = style + (" strike" if t.tag == "wrong" else "")
        top = Text("╭" + "─" * (len(s) + 2) + "╮", style=style)
        mid = Text.assemble(("│ ", style), (s, num_style + " bold"), (" │", style))
        bot = Text("╰" + "─" * (len(s) + 2) + "╯", style=style)
        boxes.append(([top, mid, bot], len(s) + 4))
    if target is not None:
        s = str(target)
        style = P.GOOD if reached else P.BACK
        arrow = ("   ", " → ", "   ")
        tgt = [
            Text.assemble((arrow[0], ""), ("╔" + "═" * (len(s) + 2) + "╗", style)),
            Text.assemble((arrow[1], P.DIM), ("║ ", style), (s, style + " bold"), (" ║", style)),
            Text.assemble((arrow[2], ""), ("╚" + "═" * (len(s) + 2) + "╝", style)),
        ]
        boxes.append((tgt, len(s) + 7))
    rows: list[Text] = []
    line: list[tuple[list[Text], int]] = []
    used = 0

    def flush() -> None:
        if not line:
            return
        for r in range(3):
            t = Text()
            for k, (parts, _) in enumerate(line):
                if k:
                    t.append(" ")
                t.append_text(parts[r])
            rows.append(t)

    for box in boxes:
        need = box[1] + (1 if line else 0)
        if line and used + need > width:
            flush()
            line, used = [], 0
            need = box[1]
        line.append(box)
        used += need
    flush()
    return rows


class PuzzlePanel(Static):
    """Tiles for the numbers available in the focused search state."""

    DEFAULT_CSS = "PuzzlePanel { height: auto; }"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.puzzle: Puzzle | None = None
        self.focus_state = Focus()
        self.verdict_ok: bool | None = None
        self._merge_timer = None

    def show(self, puzzle: Puzzle | None, focus: Focus, verdict_ok: bool | None = None,
             animate: float = 0.0) -> None:
        """Show the state of ``focus``. With ``animate`` (seconds), a focus that adds one
        legal step to the shown one is drawn first with the two operand tiles lit, then
        merged into the result tile."""
        prev = self.focus_state.lines if self.puzzle == puzzle else None
        self.puzzle, self.focus_state, self.verdict_ok = puzzle, focus, verdict_ok
        self.border_title = "Puzzle" if puzzle is None else f"Puzzle · target {puzzle.target}"
        if self._merge_timer is not None:
            self._merge_timer.stop()
            self._merge_timer = None
        lines = focus.lines
        if (animate and puzzle is not None and prev is not None and focus.mode in ("step", "goal")
                and len(lines) == len(prev) + 1 and lines[:-1] == prev):
            before = board(puzzle, prev)
            step = parse_step(lines[-1])
            if step is not None and not before.problem and board(puzzle, lines).problem is None:
                self.update(self._render_merging(before, step))
                self._merge_timer = self.set_timer(animate, self._settle)
                return
        self.update(self._render_board())

    def _settle(self) -> None:
        self._merge_timer = None
        self.update(self._render_board())

    def _render_merging(self, before: Board, step):
        tiles = [Tile(t.value, "made" if t.tag == "new" else t.tag) for t in before.tiles]
        lit = 0
        for want in (step.a, step.b):
            for t in tiles:
                if t.value == want and t.tag != "merging":
                    t.tag = "merging"
                    lit += 1
                    break
        width = max(12, (self.content_size.width or 30))
        rows = _tile_rows(tiles, None, width, False)
        caption = Text.assemble((f"{step.a} {step.op} {step.b}", "bold " + P.ACCENT), (" → ", P.DIM),
                                (str(step.result), P.NEW))
        return Group(*rows, caption, Text(""))

    def on_resize(self) -> None:
        self.update(self._render_board())

    def _render_board(self):
        if self.puzzle is None:
            return Text("Type a puzzle above\n(e.g. 25 5 2 7 -> 92)\nor press d to draw one.", style=P.DIM)
        f = self.focus_state
        b: Board = board(self.puzzle, f.lines, f.wrong, f.mode)
        width = max(12, (self.content_size.width or 30))
        last = [t for t in b.tiles if t.tag != "wrong"]
        # (rules "any": the target made by the last step, other tiles may be left: b.reached)
        reached = b.reached or (len(last) == 1 and last[0].value == self.puzzle.target and not b.problem)
        show_target = sum(len(str(t.value)) + 5 for t in b.tiles) + len(str(self.puzzle.target)) + 7 <= width
        rows = _tile_rows(b.tiles, self.puzzle.target if show_target else None, width, reached)
        parts: list = list(rows)
        # the path taken so far, one step per line is too tall: join them
        path = Text()
        for k, (line, ok) in enumerate(b.applied):
            if k:
                path.append(" › ", style=P.DIM)
            last_one = k == len(b.applied) - 1
            style = P.TEXT if ok else P.BAD
            if last_one and f.mode in ("step", "goal") and ok:
                style = P.NEW
            if last_one and f.mode == "backtrack":
                style = P.BAD + " strike"
            path.append(line, style=style)
        if f.mode in ("undo", "rollback") and f.wrong:
            if b.applied:
                path.append(" › ", style=P.DIM)
            path.append(f.wrong, style=P.BAD + " strike")
            path.append(" ↩", style=P.BACK + " bold")
        if not path.plain:
            path = Text("start: no steps yet", style=P.DIM)
        parts.append(path)
        caption = CAPTION.get(f.mode, "")
        if b.problem:
            parts.append(Text(f"✗ {b.problem}", style=P.BAD))
        elif f.mode == "final":
            if self.verdict_ok is None:
                parts.append(Text(caption, style=P.ACCENT))
            elif self.verdict_ok:
                parts.append(Text("✓ verified answer", style=P.GOOD + " bold"))
            else:
                parts.append(Text("✗ selected answer is wrong", style=P.BAD + " bold"))
        elif caption:
            style = {"goal": P.GOOD, "backtrack": P.BAD, "undo": P.BAD, "rollback": P.BACK}.get(f.mode, P.DIM)
            parts.append(Text(caption, style=style))
        return Group(*parts)
