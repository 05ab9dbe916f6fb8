"""Snapshot tests of `sbt tui` (pytest-textual-snapshot) at 80x24 and 120x40.

All on the frozen scripted event stream of ``_tui_fixtures`` (replayed, paused at a
chosen frame) so the pictures are deterministic. Update the baselines with
``pytest tests/test_tui_snapshot.py --snapshot-update`` and look at the SVGs in
``tests/__snapshots__/test_tui_snapshot/`` before accepting them.
"""

from __future__ import annotations

import pytest

from _tui_fixtures import trace_events
from sbt_core.search.events import Backtrack
from tui.app import SbtApp

SIZES = [(80, 24), (120, 40)]


def replay_app() -> SbtApp:
    return SbtApp(events=trace_events(), speed=1)


def at(frame_of):
    """A run_before that pauses the replay at the frame ``frame_of(timeline)``."""

    async def run_before(pilot) -> None:
        app = pilot.app
        app.playing = False
        app.timeline.seek(frame_of(app.timeline))
        app.refresh_views()
        await pilot.pause()
        app.refresh_views()  # again, now that every widget has its size
        await pilot.pause()

    return run_before


def first_rollback(tl) -> int:
    """Just after the second frame of the first Backtrack: back at the parent state."""
    for k, f in enumerate(tl.frames):
        if isinstance(tl.events[f.event], Backtrack) and f.phase == 1:
            return k + 1
    raise AssertionError("no backtrack in the trace")


def first_backtrack_sample(tl) -> int:
    """The frame where the first sample ends in <backtrack> (its step turns red)."""
    for k in range(1, len(tl.frames) + 1):
        tl.seek(k)
        if "<backtrack>" in tl.state.message:
            return k
    raise AssertionError("no <backtrack> sample")


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_final_verdict(snap_compare, size):
    assert snap_compare(replay_app(), terminal_size=size, run_before=at(lambda tl: len(tl.frames)))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_rollback(snap_compare, size):
    assert snap_compare(replay_app(), terminal_size=size, run_before=at(first_rollback))


def test_backtrack_step_red(snap_compare):
    assert snap_compare(replay_app(), terminal_size=(80, 24), run_before=at(first_backtrack_sample))


def test_bad_puzzle_error(snap_compare):
    app = SbtApp(speed=0)

    async def run_before(pilot) -> None:
        await pilot.press(*"2 3 5 -> 3O", "enter")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


def test_help_screen(snap_compare):
    assert snap_compare(replay_app(), terminal_size=(80, 24), press=["space", "question_mark"])
