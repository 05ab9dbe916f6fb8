"""The settings form (a modal): method, N, b, temperature, seed, model, backend, split."""

from __future__ import annotations

from dataclasses import replace

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select

from sbt_core.errors import SbtError
from sbt_core.limits import MAX_SEED, check_range
from sbt_core.search.common import check_param

from ..sources import Settings

BACKENDS = ("torch", "llama", "scripted")


class SettingsScreen(ModalScreen[Settings | None]):
    """Returns the new settings, or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "cancel"), Binding("ctrl+s", "save", "apply")]

    def __init__(self, settings: Settings, methods: list[str]) -> None:
        super().__init__()
        self.settings = settings
        self.methods = methods

    def compose(self) -> ComposeResult:
        s = self.settings
        with Vertical(id="settings-box"):
            with Grid(id="settings-grid"):
                yield Label("method")
                yield Select([(m, m) for m in self.methods], value=s.method if s.method in self.methods else self.methods[0],
                             allow_blank=False, id="set-method")
                yield Label("N (samples)")
                yield Input(str(s.n), id="set-n", type="integer")
                yield Label("b (backtracks)")
                yield Input(str(s.b), id="set-b", type="integer")
                yield Label("temperature")
                yield Input("" if s.temperature is None else f"{s.temperature:g}", id="set-temperature",
                            type="number", placeholder="the model's (empty)")
                yield Label("seed")
                yield Input(str(s.seed), id="set-seed", type="integer")
                yield Label("model")
                yield Input(s.model or "", placeholder="default (shipped model)", id="set-model")
                yield Label("backend")
                yield Select([(b, b) for b in BACKENDS], value=s.backend if s.backend in BACKENDS else "torch",
                             allow_blank=False, id="set-backend")
                yield Label("split")
                yield Input(s.split, id="set-split")
            yield Label("", id="settings-error")
            with Horizontal(id="settings-buttons"):
                yield Button("Apply", variant="primary", id="settings-apply", compact=True)
                yield Button("Cancel", id="settings-cancel", compact=True)

    def on_mount(self) -> None:
        box = self.query_one("#settings-box")
        box.border_title = "Settings"
        box.border_subtitle = "Ctrl+S apply · Esc cancel"

    def _read(self) -> Settings:
        def val(id_: str) -> str:
            return self.query_one(f"#{id_}", Input).value.strip()

        try:  # the limits of sbt solve (sbt_core.limits), checked the same way
            n = check_param("n", val("set-n"), int, "N")
            b = check_param("b", val("set-b"), int, "b")
            temperature = check_param("temperature", val("set-temperature"), float, "temperature") \
                if val("set-temperature") else None
            seed = check_range(int(val("set-seed")) if val("set-seed").lstrip("-").isdigit() else val("set-seed"),
                               "seed", 0, MAX_SEED, integer=True)
        except SbtError as exc:
            raise ValueError(str(exc)) from None
        return replace(
            self.settings,
            method=str(self.query_one("#set-method", Select).value),
            n=n, b=b, temperature=temperature, seed=seed,
            model=val("set-model") or None,
            backend=str(self.query_one("#set-backend", Select).value),
            split=val("set-split") or "test_new",
        )

    def action_save(self) -> None:
        try:
            self.dismiss(self._read())
        except ValueError as exc:
            self.query_one("#settings-error", Label).update(f"✗ {exc}")

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "settings-apply":
            self.action_save()
        else:
            self.action_cancel()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_save()
