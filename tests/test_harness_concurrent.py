"""Two benches (two processes) writing one results database at the same time."""

from __future__ import annotations

import sqlite3
import subprocess

import _bench_fakes as fakes
from harness.store import MIGRATIONS, open_store

N = 120


def start(puzzles, db, n):
    args = ["bench", "--puzzles", str(puzzles), "--methods", "fake", "--n", n, "--b", "0", "--db", str(db), "--quiet"]
    return subprocess.Popen(fakes.sbt_cmd(*args), env=fakes.sub_env(FAKE_DELAY="0.01"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(procs):
    for p in procs:
        out, err = p.communicate(timeout=90)
        assert p.returncode == 0, err


def check_integrity(db):
    conn = sqlite3.connect(db)
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    assert conn.execute("pragma foreign_key_check").fetchall() == []
    conn.close()


def test_two_benches_different_runs_one_db(tmp_path):
    puzzles, db = tmp_path / "p.jsonl", tmp_path / "shared.db"  # the db does not exist yet: both create it
    fakes.make_puzzles(puzzles, N)
    finish([start(puzzles, db, "8"), start(puzzles, db, "16")])
    check_integrity(db)
    with open_store(db) as s:
        runs = s.runs()
        assert len(runs) == 2 and all(r["status"] == "done" for r in runs)
        assert s.schema_version == [name for name, _ in MIGRATIONS] and s.db["_migrations"].count == len(MIGRATIONS)
        for r in runs:
            assert s.count_results(r["id"])[0] == N
            assert s.done_indices(r["id"]) == set(range(N))
        # the two really wrote at the same time
        spans = s.query("select run_id, min(finished) a, max(finished) b from results group by run_id")
        assert spans[0]["a"] < spans[1]["b"] and spans[1]["a"] < spans[0]["b"], spans


def test_two_benches_same_run_one_db(tmp_path):
    puzzles, db = tmp_path / "p.jsonl", tmp_path / "shared.db"
    fakes.make_puzzles(puzzles, N)
    open_store(db).close()
    finish([start(puzzles, db, "8"), start(puzzles, db, "8")])
    check_integrity(db)
    with open_store(db) as s:
        runs = s.runs()
        assert len(runs) == 1  # the same identity: one run, each puzzle once
        assert s.count_results(runs[0]["id"])[0] == N
        assert s.query("select count(*) c from (select puzzle_index from results group by 1 having count(*) > 1)")[0]["c"] == 0
