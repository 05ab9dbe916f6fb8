"""The results store: migrations, reopening, identity, foreign files refused."""

from __future__ import annotations

import sqlite3
import sys

import pytest
import sqlite_utils

from harness import store as store_mod
from harness.store import StoreError, open_store, run_key

RUN = {"method": "fake", "params": {"n": 8, "b": 1}, "model": "m", "model_sha256": "abc", "backend": "torch",
       "puzzles_sha256": "p" * 64, "seed": 0, "split": "test_new", "n_puzzles": 3}


def test_migrations_on_memory_db():
    s = open_store(":memory:")
    assert s.schema_version == [name for name, _ in store_mod.MIGRATIONS]
    assert {"_migrations", "runs", "results", "iterations"} <= set(s.db.table_names())
    runs = s.db["runs"].columns_dict
    for col in ("method", "params", "model", "model_sha256", "backend", "split", "puzzles", "puzzles_sha256",
                "n_puzzles", "seed", "git_sha", "versions", "started", "finished", "status"):
        assert col in runs, col
    results = s.db["results"]
    assert results.pks == ["run_id", "puzzle_index"]
    for col in ("numbers", "target", "solved", "failure", "steps", "tokens", "model_calls", "backtracks",
                "wall_ms", "trace"):
        assert col in results.columns_dict, col
    assert s.db["iterations"].pks == ["experiment", "round"]
    for col in ("model", "fast_acc", "slow_acc", "n_train_paths", "fast_run_id", "slow_run_id"):
        assert col in s.db["iterations"].columns_dict
    assert store_mod.migrate(s) == []  # nothing left to apply


def test_reopen_is_idempotent_and_keeps_data(tmp_path):
    path = tmp_path / "r.db"
    with open_store(path) as s:
        assert s.db.journal_mode == "wal"
        assert s.db.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
        run, created = s.get_or_create_run(RUN)
        assert created
        assert s.add_result(run["id"], {"puzzle_index": 0, "numbers": [1, 2], "target": 3, "solved": True})
    schema = sqlite_utils.Database(path).schema
    for _ in range(2):
        with open_store(path) as s:
            assert s.schema_version == [name for name, _ in store_mod.MIGRATIONS]
            assert s.db["_migrations"].count == len(store_mod.MIGRATIONS)
            assert s.db["runs"].count == 1 and s.db["results"].count == 1
    assert sqlite_utils.Database(path).schema == schema


def test_new_migration_applied_once_on_open(tmp_path, monkeypatch):
    path = tmp_path / "r.db"
    open_store(path).close()
    calls = []

    def m999(db):
        calls.append(1)
        db["runs"].add_column("note", str)

    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS + [("m999_note", m999)])
    monkeypatch.setattr(store_mod, "KNOWN_MIGRATIONS", store_mod.KNOWN_MIGRATIONS | {"m999_note"})
    with open_store(path) as s:
        assert "note" in s.db["runs"].columns_dict
    with open_store(path) as s:
        assert s.schema_version == [name for name, _ in store_mod.MIGRATIONS]  # m999_note last
    assert calls == [1]


def test_run_identity():
    s = open_store(":memory:")
    a, created = s.get_or_create_run(RUN)
    assert created and a["status"] == "running"
    s.set_status(a["id"], "interrupted")
    b, created = s.get_or_create_run({**RUN, "params": {"b": 1, "n": 8}, "n_puzzles": 5})  # same identity
    assert not created and b["id"] == a["id"] and b["status"] == "running" and b["n_puzzles"] == 5
    assert b["started"] == a["started"]
    # a longer --limit extends the run; a shorter one resumes into it without shrinking what
    # it asked for, and the row keeps the command of its longest start
    c, _ = s.get_or_create_run({**RUN, "n_puzzles": 20, "command": "sbt bench --limit 20"})
    d, _ = s.get_or_create_run({**RUN, "n_puzzles": 3, "command": "sbt bench --limit 3"})
    assert c["id"] == d["id"] == a["id"] and (d["n_puzzles"], d["command"]) == (20, "sbt bench --limit 20")
    for change in ({"seed": 1}, {"params": {"n": 16, "b": 1}}, {"model_sha256": "def"}, {"backend": "llama"},
                   {"puzzles_sha256": "q" * 64}, {"method": "other"}):
        c, created = s.get_or_create_run({**RUN, **change})
        assert created and c["id"] != a["id"], change
    assert run_key("m", {"a": 1, "b": 2}, None, None, "x", 0) == run_key("m", {"b": 2, "a": 1}, None, None, "x", 0)
    with pytest.raises(ValueError):
        s.set_status(a["id"], "weird")


def test_results_never_duplicated():
    s = open_store(":memory:")
    run, _ = s.get_or_create_run(RUN)
    row = {"puzzle_index": 4, "numbers": [1, 2], "target": 3, "solved": 1, "steps": ["1 + 2 = 3"], "trace": [{"e": 1}]}
    assert s.add_result(run["id"], row) is True
    assert s.add_result(run["id"], {**row, "solved": 0}) is False
    assert s.count_results(run["id"]) == (1, 1)
    assert s.done_indices(run["id"]) == {4}
    with pytest.raises(sqlite3.IntegrityError):
        s.db.execute("insert into results (run_id, puzzle_index, numbers, target, solved) values (?, 4, '[]', 3, 0)",
                     [run["id"]])


def test_record_iteration_upserts_rounds():
    s = open_store(":memory:")
    r0 = s.record_iteration("exp1", 0, model="base", fast_acc=0.25, slow_acc=0.5)
    assert r0["status"] == "done" and r0["finished"]
    r1 = s.record_iteration("exp1", 1, status="running", params={"lr": 1e-4})
    assert r1["status"] == "running" and r1["started"] and r1["params"] == '{"lr":0.0001}'
    assert s.completed_rounds("exp1") == {0}
    r1 = s.record_iteration("exp1", 1, model="round1", fast_acc=0.4, slow_acc=0.6, n_train_paths=123)
    assert r1["status"] == "done" and r1["started"] and r1["n_train_paths"] == 123
    assert [r["round"] for r in s.iterations("exp1")] == [0, 1]
    assert s.completed_rounds("exp1") == {0, 1}
    assert s.iterations("other") == []
    with pytest.raises(ValueError, match="unknown iterations columns"):
        s.record_iteration("exp1", 2, accuracy=1.0)


def test_foreign_files_refused(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not an SQLite file at all\n" * 50)
    with pytest.raises(StoreError, match="not a usable sbt results database"):
        open_store(garbage)
    other = tmp_path / "other.db"
    sqlite_utils.Database(other)["dogs"].insert({"name": "Cleo"})
    with pytest.raises(StoreError, match="not an sbt results database"):
        open_store(other)
    assert sqlite_utils.Database(other).table_names() == ["dogs"]  # left untouched
    newer = tmp_path / "newer.db"
    open_store(newer).close()
    sqlite_utils.Database(newer)["_migrations"].insert({"name": "m999_future", "applied": "x"})
    with pytest.raises(StoreError, match="newer sbt"):
        open_store(newer)
    with pytest.raises(StoreError, match="is a directory"):
        open_store(tmp_path)
    with pytest.raises(StoreError, match="no results database"):
        open_store(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_default_path_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("SBT_DB", raising=False)
    assert store_mod.default_db_path() == store_mod.REPO_ROOT / "results.db"
    monkeypatch.setenv("SBT_DB", str(tmp_path / "env.db"))
    assert store_mod.default_db_path() == tmp_path / "env.db"
    with open_store() as s:
        assert s.path == tmp_path / "env.db"
    assert (tmp_path / "env.db").exists()


@pytest.mark.parametrize("args", [["bench", "report"], ["bench", "--methods", "exact", "--puzzles", "PUZZLES"]])
def test_cli_foreign_db_one_line_exit_2(tmp_path, monkeypatch, capsys, args):
    from sbt_cli.app import main

    bad = tmp_path / "bad.db"
    bad.write_bytes(b"\x00garbage" * 100)
    puzzles = tmp_path / "p.jsonl"
    puzzles.write_text('{"numbers": [1, 2, 3, 4], "target": 10}\n')
    argv = ["sbt", *[str(puzzles) if a == "PUZZLES" else a for a in args], "--db", str(bad)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a usable sbt results database" in err and "bad.db" in err
