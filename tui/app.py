"""`sbt tui`: watch a search think — steps, <backtrack>, rollback, candidates, verdict.

The app is a player for one event stream. A live search runs in a worker thread and
hands each event to the UI with ``call_from_thread``; a stored trace is the same stream
read from disk. Either way the events go into a ``Timeline`` and a timer moves the
playback cursor through its frames at the chosen speed, so pausing, stepping back and
forth, and changing speed work the same for live and recorded searches, and the UI
never waits on the model.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Footer, Input, Label, Static
from textual.worker import get_current_worker

from sbt_core.countdown import Puzzle, parse_puzzle
from sbt_core.errors import SbtError
from sbt_core.search.events import Done, Event

from .demo import DEMO
from .sources import (
    ModelUnavailable,
    Settings,
    Trace,
    live_search,
    method_names,
    needs_model,
    random_puzzle,
    stored_trace,
)
from .state import Timeline
from .widgets.help import HelpScreen
from .widgets.panels import AnswerPanel, LogPanel, SettingsPanel, StatsPanel
from .widgets.replay_picker import ReplayScreen
from .widgets.settings_form import SettingsScreen
from .widgets.tiles import PuzzlePanel
from .widgets.tree import SearchTree

class PuzzleInput(Input):
    """The puzzle box. Puzzles never contain letters, so the app's letter keys (q quit,
    ? help, d draw, s settings, o replay, m method, r run, n new seed) still work while
    typing; any other character is typed (a stray letter gets the inline error)."""

    PASS_THROUGH = {"q": "quit", "?": "help", "d": "draw", "s": "settings", "o": "open_stored",
                    "m": "next_method", "r": "rerun", "n": "new_seed"}
    BINDINGS = [
        Binding("enter", "submit", "run", show=True),
        Binding("escape", "app.leave_input", "leave box", show=True),
    ]

    async def _on_key(self, event) -> None:
        action = self.PASS_THROUGH.get(event.character or "")
        if action:
            event.prevent_default()  # Input's own handler (next in the MRO) would type it
            event.stop()
            await self.app.run_action(action)


SPEEDS = (1, 2, 4, 8, 16, 32, 64, 0)  # frames per second; 0 = as fast as possible
TICK = 0.05


def speed_label(speed: int) -> str:
    return "instant" if speed == 0 else f"{speed} frame{'s' if speed > 1 else ''}/s"


class _Stopped(Exception):
    """Raised from a live search's event callback when the search is cancelled or replaced."""


class SbtApp(App):
    """The self-backtracking search viewer."""

    CSS_PATH = "sbt.tcss"
    TITLE = "sbt · self-backtracking search"
    ENABLE_COMMAND_PALETTE = False

    BINDINGS = [
        Binding("question_mark", "help", "help", key_display="?"),
        Binding("space", "toggle_pause", "pause/play"),
        Binding("right,full_stop", "step_forward", "step", key_display="→"),
        Binding("left,comma", "step_back", "back", key_display="←"),
        Binding("home", "seek_start", "start", show=False),
        Binding("end", "seek_end", "end", show=False),
        Binding("plus,equals_sign", "faster", "speed", key_display="+/-"),
        Binding("minus,underscore", "slower", "slower", show=False),
        Binding("r", "rerun", "run", show=False),
        Binding("n", "new_seed", "new seed"),
        Binding("m", "next_method", "method", show=False),
        Binding("s", "settings", "settings"),
        Binding("d", "draw", "random"),
        Binding("o", "open_stored", "replay"),
        Binding("slash,e", "edit", "edit", show=False),
        Binding("q", "quit", "quit"),
    ]

    def __init__(
        self,
        puzzle: str | None = None,
        settings: Settings | None = None,
        *,
        trace: Trace | None = None,
        events: Iterable[Event] | None = None,
        speed: int = 16,
        autorun: bool = True,
        db: Path | None = None,
        data_root: Path | None = None,
        backend=None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``puzzle``: text to start with; ``trace`` / ``events``: a recorded stream to replay
        instead of searching; ``backend``: a ready backend for live searches (tests)."""
        super().__init__()
        self.settings = settings or Settings()
        self.initial_text = puzzle or ""
        self.initial_trace = trace
        self.initial_events = list(events) if events is not None else None
        self.speed_idx = SPEEDS.index(speed) if speed in SPEEDS else 4
        self.autorun = autorun
        self.db = db
        self.data_root = data_root
        self.backend = backend
        self.clock = clock
        self.rng = random.Random(self.settings.seed)
        self.timeline: Timeline | None = None
        self.playing = True
        self.live = False  # a search worker is producing events
        self.source = ""  # what the timeline came from (for the title)
        self._gen = 0
        self._credit = 0.0
        self._t0: float | None = None
        self._t1: float | None = None
        self._backends: dict = {}
        self._bad_text: str | None = None

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        with Horizontal(id="top"):
            yield PuzzleInput(self.initial_text, placeholder="numbers -> target, e.g. 25 5 2 7 -> 92", id="puzzle-input")
            yield Button("Run ⏎", id="run-button", variant="primary", compact=True)
            yield Button("Random", id="draw-button", compact=True)
        yield Label("", id="puzzle-error")
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield PuzzlePanel(id="puzzle")
                yield StatsPanel(id="stats")
                yield SettingsPanel(id="settings")
                yield LogPanel(id="log")
            with Vertical(id="right"):
                yield Static("", id="banner")
                yield SearchTree(id="tree")
                yield Static("", id="narration")
                yield AnswerPanel(id="answer")
        yield Footer()

    def on_resize(self) -> None:
        self.query_one(LogPanel).display = self.size.height >= 30

    def on_mount(self) -> None:
        self.on_resize()
        top = self.query_one("#top")
        top.border_title = "sbt · self-backtracking search"
        top.border_subtitle = "Enter run · Esc leave box · ? help"
        self.query_one("#stats").border_title = "Stats"
        self.query_one("#settings").border_title = "Settings"
        self.query_one("#settings").border_subtitle = "s edit · m method"
        self.query_one("#log").border_title = "Log"
        self.query_one("#tree").border_title = "Search tree"
        self.set_interval(TICK, self._tick)
        self.set_interval(0.25, self._refresh_clock)
        self.refresh_views()
        self.query_one("#puzzle-input", Input).focus()
        if self.initial_trace is not None:
            self.replay(self.initial_trace)
        elif self.initial_events is not None:
            self.replay_events(self.initial_events)
        elif self.initial_text and self.autorun:
            self.action_run()

    # ------------------------------------------------------------------ starting streams
    def _new_timeline(self, puzzle: Puzzle, method: str, params: dict, source: str) -> Timeline:
        self._gen += 1
        self.workers.cancel_group(self, "search")
        self.timeline = Timeline(puzzle, method, params)
        self.playing = True
        self._credit = 0.0
        self._t0 = self._t1 = None
        self.live = False
        self.source = source
        self._banner("")
        self._error("")
        self.query_one("#puzzle-input", Input).value = str(puzzle)
        return self.timeline

    def replay(self, trace: Trace) -> None:
        """Play a recorded stream (a stored trace)."""
        self.settings = _settings_from(self.settings, trace.method, trace.params)
        tl = self._new_timeline(trace.puzzle, trace.method, trace.params, trace.label or "replay")
        tl.extend(trace.events)
        self.refresh_views()
        self.query_one(SearchTree).focus()

    def replay_events(self, events: list[Event], puzzle: Puzzle | None = None) -> None:
        done = next((e for e in reversed(events) if isinstance(e, Done)), None)
        if puzzle is None and done is None:
            raise SbtError("a replay needs the puzzle or a Done event")
        puzzle = puzzle or done.result.puzzle
        method = done.result.method if done else self.settings.method
        params = done.result.params if done else {}
        self.replay(Trace(puzzle, method, params, list(events), "replay"))

    def start_search(self, puzzle: Puzzle) -> None:
        """Run a live search in a worker thread; its events stream into the timeline."""
        s = self.settings
        self._new_timeline(puzzle, s.method, s.params_for(puzzle), "live")
        self.live = True
        self._t0 = self.clock()
        if needs_model(s.method) and self.backend is None:
            self._narrate(f"opening the model ({s.model or 'default'}, {s.backend})…")
        self.refresh_views()
        self._search(self._gen, puzzle, replace(s))

    @work(thread=True, exclusive=True, group="search", exit_on_error=False)
    def _search(self, gen: int, puzzle: Puzzle, settings: Settings) -> None:
        worker = get_current_worker()
        try:
            backend = self.backend
            if backend is None and needs_model(settings.method):
                from .sources import open_backend

                key = (settings.model, settings.backend, len(puzzle.numbers), puzzle.rules)
                backend = self._backends.get(key)
                if backend is None:
                    backend = self._backends[key] = open_backend(settings, puzzle)

            def on_event(ev: Event) -> None:
                if worker.is_cancelled or gen != self._gen:
                    raise _Stopped
                self._post(self._on_event, gen, ev)

            live_search(puzzle, settings, backend, on_event)
        except _Stopped:
            return
        except ModelUnavailable as exc:
            self._post(self._on_failure, gen, "No model found", str(exc), True)
        except SbtError as exc:
            self._post(self._on_failure, gen, "Search failed", str(exc), False)
        except Exception as exc:  # a bug in a strategy must not take the UI down
            self._post(self._on_failure, gen, "Search crashed", f"{type(exc).__name__}: {exc}", False)

    def _post(self, fn, *args) -> None:
        try:
            self.call_from_thread(fn, *args)
        except RuntimeError:  # the app is shutting down
            pass

    def _on_event(self, gen: int, ev: Event) -> None:
        if gen != self._gen or self.timeline is None:
            return
        self.timeline.add(ev)
        if isinstance(ev, Done):
            self.live = False
            self._t1 = self.clock()
        if self.speed == 0 and self.playing:
            self.timeline.seek(len(self.timeline.frames))
            self.refresh_views()
        else:
            self._refresh_status()

    def _on_failure(self, gen: int, title: str, message: str, no_model: bool) -> None:
        if gen != self._gen:
            return
        self.live = False
        self._t1 = self.clock()
        hint = ""
        if no_model:
            hint = (f"\n[dim]m: switch method ({DEMO} and exact need no model) · s: set a model "
                    "directory · o: replay a stored trace[/dim]")
        self._banner(f"{_escape(message)}{hint}", title)
        self._narrate(f"✗ {title.lower()}")
        self.refresh_views()

    # ------------------------------------------------------------------ playback
    @property
    def speed(self) -> int:
        return SPEEDS[self.speed_idx]

    def _tick(self) -> None:
        tl = self.timeline
        if tl is None or not self.playing or tl.at_end:
            self._credit = 0.0
            return
        if self.speed == 0:
            k = len(tl.frames)
        else:
            self._credit += self.speed * TICK
            k = int(self._credit)
            self._credit -= k
        if k and tl.forward(k):
            self.refresh_views()

    def _refresh_clock(self) -> None:
        if self.live:
            self._refresh_stats()

    def elapsed(self) -> float | None:
        tl = self.timeline
        if tl is None:
            return None
        done = tl.events[-1] if tl.finished else None
        if self._t0 is not None:  # a live search: the search's own time once it is done
            if done is not None:
                return done.result.stats.wall_ms / 1000
            return (self._t1 if self._t1 is not None else self.clock()) - self._t0
        ms = tl.state.counters.wall_ms  # a replay: known when its Done frame is shown
        return None if ms is None else ms / 1000

    # ------------------------------------------------------------------ views
    def refresh_views(self) -> None:
        tl = self.timeline
        state = tl.state if tl else None
        panel = self.query_one(PuzzlePanel)
        if state is None:
            panel.show(None, _empty_focus())
            self.query_one(SearchTree).show(_empty_state())
            self.query_one(AnswerPanel).show(_empty_state())
        else:
            ok = state.result.verdict.ok if state.result is not None else None
            # a merge animation only when frames come slowly enough to see it
            anim = min(0.35, 0.5 / self.speed) if self.playing and 0 < self.speed <= 8 else 0.0
            panel.show(state.puzzle, state.focus, ok, animate=anim)
            self.query_one(SearchTree).show(state)
            self.query_one(AnswerPanel).show(state, rows=3 if self.size.height < 36 else 6)
            if state.message:
                self._narrate(state.message, result=state.result)
            self.query_one(LogPanel).show(state)
        self._refresh_stats()
        self._refresh_status()

    def _refresh_stats(self) -> None:
        tl = self.timeline
        state = tl.state if tl else _empty_state()
        self.query_one(StatsPanel).show(state, self.elapsed())

    def _refresh_status(self) -> None:
        tl = self.timeline
        self.query_one(SettingsPanel).show(self.settings, speed_label(self.speed))
        tree = self.query_one(SearchTree)
        if tl is None:
            status = "idle"
        elif tl.at_end and self.live:
            status = "◌ searching…"
        elif tl.at_end and tl.finished:
            status = "■ done"
        elif tl.at_end:
            status = "■ stopped"
        elif not self.playing:
            status = "‖ paused"
        else:
            status = "▶ playing"
        where = f" · {self.source}" if self.source and self.source != "live" else ""
        pos = f" · {tl.cursor}/{len(tl.frames)}" if tl is not None else ""
        tree.border_subtitle = f"{status}{pos}{where}"
        self._refresh_stats()

    def _narrate(self, text: str, result=None) -> None:
        w = self.query_one("#narration", Static)
        w.set_class(result is not None and result.verdict.ok, "-good")
        w.set_class(result is not None and not result.verdict.ok, "-bad")
        w.update(text)

    def _banner(self, markup: str, title: str = "") -> None:
        b = self.query_one("#banner", Static)
        b.update(markup)
        b.border_title = title
        b.display = bool(markup)

    def _error(self, text: str) -> None:
        label = self.query_one("#puzzle-error", Label)
        label.update(f"✗ {text}" if text else "")
        label.display = bool(text)
        self.query_one("#puzzle-input", Input).set_class(bool(text), "-invalid")

    # ------------------------------------------------------------------ actions
    def action_run(self) -> None:
        text = self.query_one("#puzzle-input", Input).value
        try:
            puzzle = parse_puzzle(text, self.settings.rules)
        except SbtError as exc:
            self._bad_text = text
            self._error(str(exc))
            self.query_one("#puzzle-input", Input).focus()
            return
        self._error("")
        self.start_search(puzzle)
        self.query_one(SearchTree).focus()

    @on(Input.Submitted, "#puzzle-input")
    def _submitted(self) -> None:
        self.action_run()

    @on(Input.Changed, "#puzzle-input")
    def _changed(self, event: Input.Changed) -> None:
        # editing the text clears its error (not the Changed that setting the value posts)
        if self.query_one("#puzzle-error", Label).display and event.value != self._bad_text:
            self._error("")

    @on(Button.Pressed, "#run-button")
    def _run_pressed(self) -> None:
        self.action_run()

    @on(Button.Pressed, "#draw-button")
    def _draw_pressed(self) -> None:
        self.action_draw()

    def action_rerun(self) -> None:
        self.action_run()

    def action_new_seed(self) -> None:
        self.settings = replace(self.settings, seed=self.settings.seed + 1)
        self.action_run()

    def action_toggle_pause(self) -> None:
        if self.timeline is None:
            return
        if self.timeline.at_end and not self.live:
            self.timeline.seek(0)  # play again from the start
            self.playing = True
            self.refresh_views()
            return
        self.playing = not self.playing
        self._refresh_status()

    def action_step_forward(self) -> None:
        if self.timeline is None:
            return
        self.playing = False
        self.timeline.forward(1)
        self.refresh_views()

    def action_step_back(self) -> None:
        if self.timeline is None:
            return
        self.playing = False
        self.timeline.back(1)
        self.refresh_views()

    def action_seek_start(self) -> None:
        if self.timeline is not None:
            self.playing = False
            self.timeline.seek(0)
            self.refresh_views()

    def action_seek_end(self) -> None:
        if self.timeline is not None:
            self.timeline.seek(len(self.timeline.frames))
            self.refresh_views()

    def action_faster(self) -> None:
        self.speed_idx = min(self.speed_idx + 1, len(SPEEDS) - 1)
        self._refresh_status()

    def action_slower(self) -> None:
        self.speed_idx = max(self.speed_idx - 1, 0)
        self._refresh_status()

    def action_next_method(self) -> None:
        names = method_names()
        i = names.index(self.settings.method) if self.settings.method in names else -1
        self.settings = replace(self.settings, method=names[(i + 1) % len(names)])
        self._refresh_status()
        self.notify(f"method: {self.settings.method} (r runs it)", timeout=2)

    def action_settings(self) -> None:
        def done(new: Settings | None) -> None:
            if new is not None:
                self.settings = new
                self._refresh_status()

        self.push_screen(SettingsScreen(self.settings, method_names()), done)

    def action_draw(self) -> None:
        n = None
        try:
            n = len(parse_puzzle(self.query_one("#puzzle-input", Input).value).numbers)
        except SbtError:
            pass
        try:
            puzzle, where = random_puzzle(self.settings.split, self.rng, n, self.data_root)
        except SbtError as exc:
            self._error(str(exc))
            return
        self.query_one("#puzzle-input", Input).value = str(puzzle)
        self.notify(f"drew {puzzle} from {where}", timeout=2)
        self.action_run()

    def action_open_stored(self) -> None:
        def done(rid: int | None) -> None:
            if rid is None:
                return
            try:
                self.replay(stored_trace(rid, self.db))
            except SbtError as exc:
                self._banner(_escape(str(exc)), "Cannot replay")

        self.push_screen(ReplayScreen(self.db), done)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_edit(self) -> None:
        self.query_one("#puzzle-input", Input).focus()

    def action_leave_input(self) -> None:
        self.query_one(SearchTree).focus()


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _settings_from(s: Settings, method: str, params: dict) -> Settings:
    keep = {}
    for key, cast in (("n", int), ("b", int), ("temperature", float)):
        if key in params:
            try:
                keep[key] = cast(params[key])
            except (TypeError, ValueError):
                pass
    return replace(s, method=method or s.method, **keep)


def _empty_state():
    from .state import SearchState

    return SearchState()


def _empty_focus():
    from .state import Focus

    return Focus()
