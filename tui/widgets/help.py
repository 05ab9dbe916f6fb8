"""The help screen: what the panels mean and every key binding."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from . import palette as P

KEYS = [
    ("Enter", "run the puzzle typed in the box"),
    ("r", "run again (same settings and seed)"),
    ("n", "re-run with a new seed"),
    ("space", "pause / resume playback"),
    ("→  ←", "step forward / back one event (pauses)"),
    ("Home  End", "jump to the start / the end of the stream"),
    ("+  -", "faster / slower playback"),
    ("m", "next search method"),
    ("s", "settings: method, N, b, temperature, seed, model, backend"),
    ("d", "draw a random puzzle from the split"),
    ("o", "open a stored trace (results.db)"),
    ("/  e", "edit the puzzle (Esc leaves the box)"),
    ("?", "this help"),
    ("q", "quit"),
]
NOTE = "In the puzzle box the letter keys above still work: puzzles have no letters."

LEGEND = [
    (Text("│25│", style="bold " + P.BASE), "a number tile (input)"),
    (Text("│30│", style=P.NEW), "two tiles merged by the step just taken"),
    (Text("│36│", style="bold strike " + P.BAD), "the result of a wrong step, being dropped"),
    (Text("│ 5│", style="bold " + P.BACK), "numbers given back by a rollback"),
    (Text("⟲ <backtrack>", style=P.BAD + " bold"), "the model rejected its own last step"),
    (Text("↩ back to …", style=P.BACK), "that step is dropped; the parent state is expanded again"),
    (Text("✓ Goal Reached!", style=P.GOOD + " bold"), "a candidate answer (✗: the verifier says it is wrong)"),
    (Text("−0.123", style=P.DIM), "mean token log-prob (negative perplexity): the selector's score"),
    (Text("★", style=P.BACK + " bold"), "the selected answer; its verdict is the strict verifier's"),
]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,enter", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        keys = Table.grid(padding=(0, 2))
        keys.add_column(style="bold " + P.ACCENT, no_wrap=True)
        keys.add_column(style=P.TEXT)
        for k, what in KEYS:
            keys.add_row(k, what)
        legend = Table.grid(padding=(0, 2))
        legend.add_column(no_wrap=True)
        legend.add_column(style=P.TEXT)
        for sym, what in LEGEND:
            legend.add_row(sym, what)
        intro = Text(
            "Watch a self-backtracking model search: it samples N continuations, "
            "emits <backtrack> when it judges its last step wrong, steps back and tries "
            "again (b rounds), then picks the candidate with the best mean log-prob.",
            style=P.DIM,
        )
        with VerticalScroll(id="help-box"):
            yield Static(Text("Keys", style="bold " + P.TEXT))
            yield Static(keys)
            yield Static(Text(NOTE, style=P.DIM))
            yield Static(Text("\nLegend", style="bold " + P.TEXT))
            yield Static(legend)
            yield Static(Text("\n") + intro)

    def on_mount(self) -> None:
        box = self.query_one("#help-box")
        box.border_title = "Help"
        box.border_subtitle = "Esc closes"

    def action_dismiss(self) -> None:
        self.dismiss(None)
