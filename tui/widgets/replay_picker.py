"""Pick a stored result (with its trace) from results.db to replay."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label

from sbt_core.errors import SbtError

from ..sources import default_db, stored_results


class ReplayScreen(ModalScreen[int | None]):
    """Returns the chosen result id, or None."""

    BINDINGS = [
        Binding("escape,q", "cancel", "cancel"),
        Binding("f", "toggle_failed", "failed only"),
    ]

    def __init__(self, db: Path | None = None) -> None:
        super().__init__()
        self.db = Path(db or default_db())
        self.failed_only = False

    def compose(self) -> ComposeResult:
        with Vertical(id="replay-box"):
            yield Label("", id="replay-info")
            yield DataTable(id="replay-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        box = self.query_one("#replay-box")
        box.border_title = f"Stored traces · {self.db.name}"
        box.border_subtitle = "Enter replay · f failed only · Esc close"
        table = self.query_one(DataTable)
        table.add_columns("#", "method", "puzzle", "solved", "failure", "backtracks")
        self.reload()

    def reload(self) -> None:
        table = self.query_one(DataTable)
        info = self.query_one("#replay-info", Label)
        table.clear()
        try:
            rows = stored_results(self.db, failed_only=self.failed_only)
        except SbtError as exc:
            info.update(f"✗ {exc}")
            return
        which = "failed results" if self.failed_only else "results"
        info.update(f"{len(rows)} stored {which} with a trace" if rows else f"no stored {which} with a trace in {self.db}")
        for r in rows:
            method = r.get("run_method") or "?"
            table.add_row(str(r["rid"]), method, str(r["puzzle"]).replace("->", "→"),
                          "✓" if r["solved"] else "✗", r.get("failure") or "", str(r.get("backtracks") or 0),
                          key=str(r["rid"]))
        table.focus()

    def action_toggle_failed(self) -> None:
        self.failed_only = not self.failed_only
        self.reload()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.dismiss(int(event.row_key.value))
