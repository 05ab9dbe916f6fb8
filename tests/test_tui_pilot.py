"""Interaction tests of `sbt tui` driven by Textual's Pilot (no terminal, no weights).

Live searches run the real ``self-backtrack`` strategy in the app's worker thread over
the scripted backend of ``_tui_fixtures``; replays use its frozen event stream.
"""

from __future__ import annotations

import asyncio
import functools
import json

import pytest
from rich.console import Console

from _tui_fixtures import PUZZLE, scripted_backend, trace_events
from sbt_core.search.events import Backtrack, Done
from tui.app import SbtApp
from tui.sources import Settings, stored_results, stored_trace, trace_from_json
from tui.state import Timeline
from tui.widgets.help import HelpScreen

SIZE = (100, 32)


def sync(fn):
    """Run an async test with asyncio.run (no pytest async plugin needed)."""

    @functools.wraps(fn)
    def wrapper(*a, **k):
        return asyncio.run(fn(*a, **k))

    return wrapper


def plain(app: SbtApp, selector: str) -> str:
    """The text a Static-based widget shows (rendered without colour)."""
    widget = app.query_one(selector)
    console = Console(width=200, record=True, file=open("/dev/null", "w"), color_system=None)
    console.print(widget.content)
    return console.export_text()


async def until(pilot, cond, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.02)


def settings(**kw) -> Settings:
    return Settings(**{"method": "self-backtrack", "n": 4, "b": 1, **kw})


def finished(app: SbtApp) -> bool:
    tl = app.timeline
    return tl is not None and tl.finished and tl.at_end and not app.live


@sync
async def test_enter_puzzle_run_final_verdict():
    app = SbtApp(settings=settings(), backend=scripted_backend(), speed=0)
    async with app.run_test(size=SIZE) as pilot:
        assert app.focused.id == "puzzle-input"
        await pilot.press(*PUZZLE, "enter")
        await until(pilot, lambda: finished(app))
        state = app.timeline.state
        assert state.result is not None and state.result.verdict.ok
        assert state.result.lines == ["4 + 5 = 9", "9 * 3 = 27"]
        answer = plain(app, "#answer")
        assert "✓ verified" in answer and "(4 + 5) * 3 = 27" in answer
        assert "★" in answer  # the selected candidate is marked
        assert "✗" in answer  # the wrong "Goal Reached!" candidate is shown as such
        assert "✓ verified" in plain(app, "#narration")
        stats = plain(app, "#stats")
        assert "backtracks" in stats and " 8 " in stats  # 8 samples ended in <backtrack>
        assert app.is_running


@sync
async def test_pause_resume_and_step_through_the_stream():
    app = SbtApp(PUZZLE, settings(), backend=scripted_backend(), speed=4)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.timeline is not None and app.timeline.cursor >= 1)
        await pilot.press("space")
        assert app.playing is False
        assert "paused" in app.query_one("#tree").border_subtitle
        at = app.timeline.cursor
        await pilot.pause(0.4)
        assert app.timeline.cursor == at  # paused: nothing moves
        await pilot.press("right", "right", "right")
        assert app.timeline.cursor == at + 3
        await pilot.press("left")
        assert app.timeline.cursor == at + 2
        # stepping back gives exactly the state of a fresh replay to that point
        fresh = Timeline(app.timeline.puzzle, app.timeline.method, app.timeline.params)
        fresh.extend(app.timeline.events)
        fresh.seek(at + 2)
        assert fresh.state.message == app.timeline.state.message
        assert fresh.state.counters == app.timeline.state.counters
        await pilot.press("space")
        assert app.playing is True
        await pilot.press("plus", "plus", "plus", "plus")  # 4 -> 64 frames/s
        await until(pilot, lambda: finished(app))
        assert app.timeline.state.result.verdict.ok


@sync
async def test_backtrack_shows_as_such_and_rolls_back():
    app = SbtApp(events=trace_events(), speed=1)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("space")  # pause, then step to the first <backtrack>
        tl = app.timeline
        while not tl.state.message.endswith("<backtrack> — rejects 4 * 5 = 20"):
            await pilot.press("right")
        tree = plain(app, "#tree-body")
        assert "4 * 5 = 20" in tree and "⟲ <backtrack>" in tree
        assert "<backtrack>" in plain(app, "#puzzle")
        assert tl.state.counters.backtracks == 1
        assert tl.state.focus.mode == "backtrack"
        # the rollback: two frames, undo then back at the parent state
        while not isinstance(tl.events[tl.frames[tl.cursor - 1].event], Backtrack):
            await pilot.press("right")
        assert tl.state.focus.mode == "undo"
        assert "dropping the wrong step" in plain(app, "#puzzle")
        assert "rolling back" in plain(app, "#tree-body")
        await pilot.press("right")
        assert tl.state.focus.mode == "rollback"
        assert tl.state.focus.lines == []  # back at the start
        assert "back at the parent state" in plain(app, "#puzzle")
        assert "↩ back to the start" in plain(app, "#tree-body")
        assert tl.state.counters.backtracks == 2  # samples 1 and 3 of the first expansion
        # the rolled-back state is expanded again under the sample that backtracked
        while not tl.state.message.startswith("expand 2"):
            await pilot.press("right")
        assert "⟳ re-expand 2" in plain(app, "#tree-body")
        await pilot.press("end")
        assert isinstance(tl.events[-1], Done)
        assert "✓ verified" in plain(app, "#answer")


@sync
async def test_bad_puzzle_inline_error_and_app_keeps_running():
    app = SbtApp(settings=settings(), backend=scripted_backend(), speed=0)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"2 3 5 ->", "enter")
        error = app.query_one("#puzzle-error")
        assert error.display and "no target after the arrow" in plain(app, "#puzzle-error")
        assert app.query_one("#puzzle-input").has_class("-invalid")
        assert app.timeline is None and app.is_running
        await pilot.press(*" 30 x", "enter")  # still bad: a different message
        assert "not a whole number" in plain(app, "#puzzle-error")
        await pilot.press("backspace", "backspace")
        assert not error.display  # editing clears the error
        await pilot.press("ctrl+a", "ctrl+k", *PUZZLE, "enter")
        await until(pilot, lambda: finished(app))
        assert app.timeline.state.result.verdict.ok


@sync
async def test_no_model_is_a_clear_message_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setenv("SBT_MODELS_DIR", str(tmp_path))
    app = SbtApp(PUZZLE, settings())
    async with app.run_test(size=SIZE) as pilot:
        banner = app.query_one("#banner")
        await until(pilot, lambda: banner.display)
        text = plain(app, "#banner")
        assert "not found" in text and "sbt train" in text
        assert banner.border_title == "No model found"
        assert app.is_running
        # the way out the message offers: another method
        await pilot.press("m")
        assert app.settings.method != "self-backtrack"
        app.settings.method = "demo"
        await pilot.press("r")
        await until(pilot, lambda: finished(app))
        assert not banner.display


@sync
async def test_rerun_with_new_seed_and_method_cycle():
    app = SbtApp(PUZZLE, settings(method="demo"), speed=0)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: finished(app))
        await pilot.press("n")
        assert app.settings.seed == 1
        await until(pilot, lambda: finished(app))
        assert app.timeline.state.result is not None


@sync
async def test_help_screen_lists_keys():
    app = SbtApp(events=trace_events(), speed=0)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("q")
    assert not app.is_running


@sync
async def test_settings_form_applies_values():
    app = SbtApp(settings=settings(), backend=scripted_backend(), speed=0)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("escape", "s")
        screen = app.screen
        n = screen.query_one("#set-n")
        n.value = "6"
        screen.query_one("#set-seed").value = "7"
        await pilot.press("ctrl+s")
        assert app.settings.n == 6 and app.settings.seed == 7
        await pilot.press("s")
        app.screen.query_one("#set-n").value = "0"
        await pilot.press("ctrl+s")
        assert "N must be" in str(app.screen.query_one("#settings-error").render())
        app.screen.query_one("#set-n").value = "2000"  # the limits of sbt solve, not the form's own
        await pilot.press("ctrl+s")
        assert "N must be at most 1024" in str(app.screen.query_one("#settings-error").render())
        app.screen.query_one("#set-n").value = "6"
        app.screen.query_one("#set-temperature").value = "1e-40"
        await pilot.press("ctrl+s")
        assert "temperature must be 0 or between 0.01 and 100" in str(app.screen.query_one("#settings-error").render())
        await pilot.press("escape")
        assert app.settings.n == 6


@sync
async def test_draw_random_puzzle_from_split(tmp_path):
    split = tmp_path / "countdown3"
    split.mkdir()
    (split / "test_new.jsonl").write_text("\n".join(
        json.dumps({"numbers": [4, 5, 3], "target": 27}) for _ in range(50)) + "\n")
    app = SbtApp(settings=settings(), backend=scripted_backend(), speed=0, data_root=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("escape", "d")
        assert app.query_one("#puzzle-input").value == "4 5 3 -> 27"
        await until(pilot, lambda: finished(app))
    app = SbtApp(settings=settings(), backend=scripted_backend(), speed=0, data_root=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        assert app.focused.id == "puzzle-input"
        await pilot.press("d")  # letters are commands in the puzzle box too
        assert app.query_one("#puzzle-input").value == "4 5 3 -> 27"
        await until(pilot, lambda: finished(app))
    app = SbtApp(settings=settings(split="nope"), speed=0, data_root=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("escape", "d")
        assert "no nope.jsonl found" in plain(app, "#puzzle-error")


def _results_db(path, events) -> None:
    """A results database as `sbt bench` writes it (harness.store): one traced result, one not."""
    from harness.store import open_store

    store = open_store(path)
    run, _ = store.get_or_create_run({"method": "self-backtrack", "params": {}, "puzzles_sha256": "t", "seed": 0})
    store.add_result(run["id"], {"puzzle_index": 0, "numbers": [4, 5, 3], "target": 27, "solved": True,
                                 "steps": [], "backtracks": 8, "trace": [e.to_json() for e in events]})
    store.add_result(run["id"], {"puzzle_index": 1, "numbers": [4, 5, 3], "target": 27, "solved": False,
                                 "failure": "no_answer", "steps": [], "backtracks": 0, "trace": None})
    store.close()


@sync
async def test_replay_a_stored_trace_from_results_db(tmp_path):
    db = tmp_path / "results.db"
    _results_db(db, trace_events())
    rows = stored_results(db)
    assert len(rows) == 1 and rows[0]["run_method"] == "self-backtrack"
    assert stored_results(db, failed_only=True) == []
    app = SbtApp(db=db, speed=0)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("escape", "o")
        await pilot.pause()
        await pilot.press("enter")
        await until(pilot, lambda: finished(app))
        assert app.timeline.state.result.verdict.ok
        assert "results.db" in app.query_one("#tree").border_subtitle


@sync
async def test_replay_missing_db_is_a_message(tmp_path):
    app = SbtApp(db=tmp_path / "none.db", speed=0)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("escape", "o")
        await pilot.pause()
        assert "no results database" in str(app.screen.query_one("#replay-info").render())
        await pilot.press("escape")
        assert app.is_running


def test_trace_json_round_trip():
    events = trace_events()
    t = trace_from_json({"trace": [e.to_json() for e in events]})
    assert str(t.puzzle) == PUZZLE and t.method == "self-backtrack" and len(t.events) == len(events)
    with pytest.raises(Exception, match="no 'trace' list"):
        trace_from_json({"puzzle": PUZZLE})


def test_demo_is_the_real_self_backtracking_search_on_a_simulated_model():
    from sbt_core.countdown import parse_puzzle
    from sbt_core.search import METHODS
    from tui.demo import DEMO, DEMO_STATES, DemoBackend, demo_events

    puzzle = parse_puzzle("100 75 50 25 6 3 -> 952")
    events = list(demo_events(puzzle, n=8, b=1, seed=0))
    params = {"n": 8, "b": 1, "max_states": DEMO_STATES, "max_new_tokens": 1024}
    real = list(METHODS["self-backtrack"].run(puzzle, DemoBackend(), params, 0))
    strip = lambda evs: [e.to_json() for e in evs[:-1]]  # noqa: E731 (Done: wall time, label)
    assert strip(events) == strip(real)
    done = events[-1].result
    assert done.method == DEMO and real[-1].result.method == "self-backtrack"
    assert done.verdict == real[-1].result.verdict and done.lines == real[-1].result.lines
    assert any(isinstance(e, Backtrack) for e in events)  # the simulated model backtracks
    assert strip(list(demo_events(puzzle, n=8, b=1, seed=0))) == strip(events)  # deterministic
    assert strip(list(demo_events(puzzle, n=8, b=1, seed=1))) != strip(events)  # the seed matters


def test_timeline_seek_is_consistent():
    events = trace_events()
    t = Timeline()
    t.extend(events)
    n = len(t.frames)
    t.seek(n)
    final = (t.state.counters, t.state.message, [c.lines for c in t.state.sorted_candidates()])
    for k in (0, 5, n // 2, n - 1):
        t.seek(k)
        fresh = Timeline()
        fresh.extend(events)
        fresh.forward(k)
        assert (t.state.counters, t.state.message) == (fresh.state.counters, fresh.state.message)
    t.seek(n)
    assert (t.state.counters, t.state.message, [c.lines for c in t.state.sorted_candidates()]) == final
    assert t.state.counters.backtracks == 8 and t.state.counters.wall_ms == 12.5


@sync
async def test_q_quits_even_from_the_puzzle_box():
    app = SbtApp(speed=0)
    async with app.run_test(size=SIZE) as pilot:
        assert app.focused.id == "puzzle-input"
        await pilot.press("1", "question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert app.query_one("#puzzle-input").value == "1"
        await pilot.press("q")
    assert not app.is_running


def test_reads_a_results_db_written_by_the_harness(tmp_path):
    store_mod = pytest.importorskip("harness.store")
    events = trace_events()
    db = tmp_path / "results.db"
    store = store_mod.open_store(db)
    run, _ = store.get_or_create_run({"method": "self-backtrack", "params": {"n": 4, "b": 1},
                                      "puzzles_sha256": "x", "seed": 0})
    store.add_result(run["id"], {"puzzle_index": 0, "numbers": [4, 5, 3], "target": 27, "solved": True,
                                 "steps": ["4 + 5 = 9", "9 * 3 = 27"], "backtracks": 8,
                                 "trace": [e.to_json() for e in events]})
    store.add_result(run["id"], {"puzzle_index": 1, "numbers": [4, 5, 3], "target": 27, "solved": False,
                                 "failure": "no_answer", "steps": [], "trace": [e.to_json() for e in events]})
    store.close()
    rows = stored_results(db)
    assert [r["solved"] for r in rows] == [1, 0]
    assert [r["solved"] for r in stored_results(db, failed_only=True)] == [0]
    trace = stored_trace(rows[0]["rid"], db)
    assert str(trace.puzzle) == PUZZLE and len(trace.events) == len(events)


@sync
async def test_bad_puzzle_on_the_command_line_opens_with_the_error():
    app = SbtApp("2 3 x -> 5")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.query_one("#puzzle-error").display
        assert "'x' is not a whole number" in plain(app, "#puzzle-error")
        assert app.timeline is None and app.is_running


def test_unset_temperature_is_the_recommendation_of_each_puzzles_model(tmp_path, monkeypatch):
    from sbt_core.countdown import Puzzle

    for name, defaults in (("countdown4-backtrack", {"temperature": 1.3}), ("countdown3-backtrack", None)):
        (tmp_path / name).mkdir()
        if defaults:
            (tmp_path / name / "search_defaults.json").write_text(json.dumps(defaults))
    monkeypatch.setenv("SBT_MODELS_DIR", str(tmp_path))
    four, three = Puzzle((3, 4, 5, 7), 41), Puzzle((4, 5, 3), 27)
    s = settings()
    assert s.temperature is None
    assert s.params_for(four)["temperature"] == 1.3
    assert s.params_for(three)["temperature"] == 0.7  # the 3-number model has no recommendation
    assert settings(temperature=0.2).params_for(four)["temperature"] == 0.2  # given: kept
    (tmp_path / "countdown4-backtrack" / "search_defaults.json").write_text("{broken")
    assert s.params_for(four)["temperature"] == 0.7  # unreadable: opening the model says why
