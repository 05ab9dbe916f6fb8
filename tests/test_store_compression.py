"""results.trace is stored zlib-compressed (migration m003_trace_zlib), read back as the same
JSON text by the store, decode(), the TUI's replay and reports; an older database whose
traces are plain JSON text is migrated by writers and read as it is by readers."""

from __future__ import annotations

import json
import sqlite3
import sys

import pytest

from harness import store as store_mod
from harness.store import StoreError, decode, open_store, read_only, trace_text

RUN = {"method": "fake", "params": {"n": 8}, "model": "m", "model_sha256": "abc", "backend": "torch",
       "puzzles_sha256": "p" * 64, "seed": 0, "split": "test_new", "n_puzzles": 3}


def _events(method: str) -> list[dict]:
    """A real event stream (a perfect scripted model), as stored."""
    from sbt_core.backends.scripted import ScriptedBackend, solver_continuation
    from sbt_core.countdown import Puzzle
    from sbt_core.search import METHODS

    backend = ScriptedBackend(default=solver_continuation)
    return [e.to_json() for e in METHODS[method].run(Puzzle((4, 5, 3), 27), backend, {}, 0)]


EVENTS = _events("best-of-n")
TEXT = json.dumps(EVENTS, separators=(",", ":"))


def _fill(path, traces=(EVENTS, TEXT, None)):
    with open_store(path) as s:
        run, _ = s.get_or_create_run(RUN)
        for i, t in enumerate(traces):
            s.add_result(run["id"], {"puzzle_index": i, "numbers": [4, 5], "target": 9, "solved": 1, "trace": t})
        return run["id"]


def _make_older(path):
    """Turn a database into one written before m003: plain JSON text traces, m003 and the
    later migrations not applied (m004_rules: no runs.rules column; m005_training: no
    runs.training column)."""
    conn = sqlite3.connect(path)
    rows = conn.execute("select rowid, trace from results where trace is not null").fetchall()
    for rowid, blob in rows:
        conn.execute("update results set trace = ? where rowid = ?", (trace_text(blob), rowid))
    conn.execute("delete from _migrations where name >= 'm003'")
    conn.execute("alter table runs drop column rules")
    conn.execute("alter table runs drop column training")
    conn.commit()
    conn.close()


def _kinds(path):
    conn = sqlite3.connect(path)
    try:
        return ([r[0] for r in conn.execute("select typeof(trace) from results order by puzzle_index")],
                [r[0] for r in conn.execute("select name from _migrations order by name")])
    finally:
        conn.close()


def test_traces_are_stored_compressed_and_read_back_the_same(tmp_path):
    db = tmp_path / "r.db"
    rid = _fill(db)
    kinds, migrations = _kinds(db)
    assert kinds == ["blob", "blob", "null"] and "m003_trace_zlib" in migrations
    conn = sqlite3.connect(db)
    stored = conn.execute("select sum(length(trace)) from results").fetchone()[0]
    conn.close()
    assert stored < 2 * len(TEXT) / 5  # compressed (best-of-n's 8 samples: 10x)
    with open_store(db) as s:
        rows = s.results(rid, with_trace=True)
        assert [r["trace"] for r in rows] == [TEXT, TEXT, None]
        assert decode(rows[0])["trace"] == EVENTS
        raw = s.query("select * from results where run_id = ? order by puzzle_index", [rid])
        assert decode(raw[0])["trace"] == EVENTS and decode(raw[2])["trace"] is None
        assert "trace" not in s.results(rid)[0]


def test_migration_compresses_the_traces_of_an_older_database(tmp_path):
    db = tmp_path / "r.db"
    rid = _fill(db)
    _make_older(db)
    assert _kinds(db)[0] == ["text", "text", "null"]
    with open_store(db) as s:
        assert "m003_trace_zlib" in s.schema_version
        assert [r["trace"] for r in s.results(rid, with_trace=True)] == [TEXT, TEXT, None]
    assert _kinds(db)[0] == ["blob", "blob", "null"]


def test_a_reader_reads_an_older_database_without_migrating_it(tmp_path, monkeypatch, capsys):
    db = tmp_path / "r.db"
    rid = _fill(db)
    _make_older(db)
    before = db.read_bytes()
    rows = read_only(db, lambda s: s.results(rid, with_trace=True))
    assert [r["trace"] for r in rows] == [TEXT, TEXT, None]
    from tui.sources import stored_results, stored_trace

    listed = stored_results(db)
    assert len(listed) == 2
    assert [e.to_json() for e in stored_trace(listed[0]["rid"], db).events] == EVENTS

    from sbt_cli.app import main

    monkeypatch.setattr(sys, "argv", ["sbt", "bench", "report", "--db", str(db), "--format", "json"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 0 and json.loads(capsys.readouterr().out)["leaderboard"]
    assert db.read_bytes() == before and _kinds(db) == (["text", "text", "null"],
                                                        ["m001_initial", "m002_backend_options"])


def test_tui_replays_a_compressed_trace(tmp_path):
    from tui.sources import stored_results, stored_trace

    db = tmp_path / "r.db"
    _fill(db, traces=(EVENTS,))
    assert _kinds(db)[0] == ["blob"]
    (row,) = stored_results(db)
    assert [e.to_json() for e in stored_trace(row["rid"], db).events] == EVENTS


def test_a_damaged_compressed_trace_is_one_clear_error():
    assert trace_text(None) is None and trace_text(TEXT) == TEXT
    with pytest.raises(StoreError, match="not zlib-compressed JSON"):
        trace_text(b"\x00garbage")
    assert store_mod.compress_trace(None) is None
