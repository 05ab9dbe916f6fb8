"""Small read-only panels: candidates + verdict, live stats, settings summary."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from sbt_core.countdown import expression, parse_step

from ..sources import Settings
from ..state import SearchState
from . import palette as P


class AnswerPanel(Static):
    """Candidates with their scores; the selected one highlighted with the verifier's verdict."""

    DEFAULT_CSS = "AnswerPanel { height: auto; }"

    def show(self, state: SearchState, rows: int = 3) -> None:
        cands = state.sorted_candidates()
        sel = tuple(state.selected.lines) if state.selected else None
        self.border_title = f"Candidates · {len(cands)}" if cands else "Candidates"
        parts: list = []
        if not cands and state.selected is not None:
            lines = " › ".join(state.selected.lines) or "no answer"
            why = f"  ({state.selected.reason})" if state.selected.reason else ""
            parts.append(Text.assemble(("★ ", P.BACK + " bold"), (lines, P.TEXT), (why, P.DIM)))
        elif not cands:
            parts.append(Text("none yet: samples ending in Goal Reached!", style=P.DIM))
        else:
            table = Table.grid(padding=(0, 1), expand=True)
            table.add_column(width=1, no_wrap=True)
            table.add_column(justify="right", no_wrap=True, min_width=6)
            table.add_column(justify="right", no_wrap=True, min_width=2)
            table.add_column(width=1, no_wrap=True)
            table.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
            shown = cands[:rows]
            if sel is not None and all(tuple(c.lines) != sel for c in shown):
                shown = shown[: rows - 1] + [c for c in cands if tuple(c.lines) == sel]
            for c in shown:
                chosen = tuple(c.lines) == sel
                style = "bold reverse " + (P.GOOD if c.ok else P.BAD) if chosen else P.TEXT
                table.add_row(
                    Text("★" if chosen else " ", style=P.BACK + " bold"),
                    Text(P.signed(c.score), style=P.DIM if not chosen else style),
                    Text(f"×{c.count}", style=P.DIM),
                    Text("✓" if c.ok else "✗", style=P.GOOD if c.ok else P.BAD),
                    Text(" › ".join(c.lines), style=style),
                )
            if len(cands) > len(shown):
                table.add_row("", "", "", "", Text(f"… {len(cands) - len(shown)} more", style=P.DIM))
            parts.append(table)
        r = state.result
        if r is not None:
            if r.verdict.ok:
                eq = expression(r.puzzle, [parse_step(x) for x in r.lines])
                parts.append(Text.assemble(("✓ verified  ", P.GOOD + " bold"), (eq, P.GOOD)))
            else:
                parts.append(Text.assemble(("✗ not solved  ", P.BAD + " bold"), (r.verdict.describe(), P.BAD)))
        elif state.selected is not None:
            parts.append(Text("selected; verifying…", style=P.ACCENT))
        self.update(Group(*parts))


class StatsPanel(Static):
    DEFAULT_CSS = "StatsPanel { height: auto; }"

    def show(self, state: SearchState, elapsed: float | None) -> None:
        c = state.counters
        t = Table.grid(padding=(0, 1))
        t.add_column(style=P.DIM, no_wrap=True, min_width=10)
        t.add_column(justify="right", style="bold " + P.TEXT, no_wrap=True)
        t.add_column(style=P.DIM, no_wrap=True, min_width=6)
        t.add_column(justify="right", style="bold " + P.TEXT, no_wrap=True)
        el = "—" if elapsed is None else (f"{elapsed:.1f} s" if elapsed >= 1 else f"{elapsed * 1000:.0f} ms")
        t.add_row("calls", f"{c.model_calls}", "tokens", f"{c.tokens:,}")
        t.add_row("backtracks", Text(f"{c.backtracks}", style="bold " + (P.BAD if c.backtracks else P.TEXT)),
                  "samples", f"{c.samples}")
        t.add_row("elapsed", el, "answers", f"{c.candidates}")
        self.update(t)


class SettingsPanel(Static):
    DEFAULT_CSS = "SettingsPanel { height: auto; }"

    def show(self, s: Settings, speed_label: str) -> None:
        t = Table.grid(padding=(0, 1), expand=True)
        t.add_column(style=P.DIM)
        t.add_column(style=P.TEXT, overflow="ellipsis", no_wrap=True)
        t.add_row("method", Text(s.method, style="bold " + P.ACCENT))
        temp = "model's" if s.temperature is None else f"{s.temperature:g}"
        t.add_row("N · b · T", f"{s.n} · {s.b} · {temp}   seed {s.seed}")
        t.add_row("model", f"{s.model or 'default'} ({s.backend})")
        t.add_row("speed", speed_label)
        self.update(t)


class LogPanel(Static):
    """The most recent things that happened (fills spare height on tall terminals)."""

    def show(self, state: SearchState) -> None:
        rows = max(1, self.content_size.height or 1)
        width = max(4, self.content_size.width or 40)
        lines = [x if len(x) <= width else x[: width - 1] + "…" for x in state.log[-rows:]]
        t = Text(no_wrap=True, overflow="ellipsis")
        for k, line in enumerate(lines):
            if k:
                t.append("\n")
            latest = k == len(lines) - 1
            style = P.TEXT if latest else P.DIM
            if line.startswith("✓"):
                style = P.GOOD
            elif line.startswith("✗") or "<backtrack>" in line:
                style = P.BAD if latest else P.BAD + " dim"
            elif "rolled back" in line or ": backtrack" in line:
                style = P.BACK if latest else P.BACK + " dim"
            t.append(line, style=style)
        self.update(t)
