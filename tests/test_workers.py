"""``sbt bench --workers K`` / ``sbt harvest --workers K`` (``harness.workers``): the rows and
the paths file of one process, written by the command while K worker processes compute;
bad values, interrupts (no worker outlives the command), resume, and torchrun ranks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from typer.testing import CliRunner

from sbt_cli.app import app
from _cli import one_error_line

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent
N = 16  # puzzles of the bench tests (the first of data/countdown4/test_new.jsonl)
SEARCH = ["--methods", "self-backtrack,best-of-n", "--n", "4", "--b", "1", "--param", "max_new_tokens=32"]
TIMING = {"wall_ms", "finished"}  # columns (and trace keys) that differ from run to run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from sbt_core.tokenizer import build_tokenizer
    from training.model import new_model, save_model

    tok = build_tokenizer()
    return save_model(new_model(tok, "tiny", seed=3), tok, tmp_path_factory.mktemp("workers") / "tiny")


@pytest.fixture(scope="module")
def puzzles(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("puzzles") / "p.jsonl"
    lines = (REPO / "data" / "countdown4" / "test_new.jsonl").read_text().splitlines()[:N]
    path.write_text("\n".join(lines) + "\n")
    return path


def bench(puzzles: Path, model: Path, db: Path, *extra: str) -> list[str]:
    return ["bench", "--puzzles", str(puzzles), "--model", str(model), *SEARCH, "--db", str(db), "--quiet", *extra]


@pytest.fixture(scope="module")
def serial_db(tmp_path_factory, puzzles, model_dir) -> Path:
    """The bench in this process alone (the serial path): the rows every other run must match."""
    db = tmp_path_factory.mktemp("serial") / "one.db"
    r = runner.invoke(app, bench(puzzles, model_dir, db))
    assert r.exit_code == 0, r.output
    return db


def _untimed(value):
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def result_rows(db: Path) -> list[dict]:
    """Every results row (with its run's identity key), timings left out, traces decoded."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in conn.execute(
            "select runs.key run_key, results.* from results join runs on runs.id = results.run_id "
            "order by runs.key, puzzle_index")]
    finally:
        conn.close()
    for r in rows:
        r.pop("run_id")
        r["trace"] = json.loads(zlib.decompress(r["trace"]))
    return [_untimed(r) for r in rows]


def runs(db: Path) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("select * from runs order by id")]
    finally:
        conn.close()


# --------------------------------------------------------------------------- same rows


def test_two_workers_write_exactly_the_rows_of_one(tmp_path, puzzles, model_dir, serial_db):
    db = tmp_path / "two.db"
    r = runner.invoke(app, bench(puzzles, model_dir, db, "--workers", "2"))
    assert r.exit_code == 0, r.output
    one, two = result_rows(serial_db), result_rows(db)
    assert len(one) == 2 * N and two == one  # same seeds, answers, scores, traces; same run keys
    assert len({r["steps"] for r in one}) > 1  # the rows differ from puzzle to puzzle: a wrong seed would show
    assert [r["status"] for r in runs(db)] == ["done", "done"]


@pytest.mark.parametrize("command", ["bench", "harvest"])
@pytest.mark.parametrize("value", ["0", "65", "-1"])
def test_bad_worker_counts_are_one_line_exit_2(tmp_path, puzzles, model_dir, command, value):
    db, out = tmp_path / "r.db", tmp_path / "paths.jsonl"
    args = bench(puzzles, model_dir, db) if command == "bench" else \
        ["harvest", "--out", str(out), "--model", str(model_dir), "--numbers", "4", "--puzzles", "8"]
    one_error_line(runner.invoke(app, [*args, "--workers", value]), "--workers", "between 1 and 64", value)
    assert not db.exists() and not out.exists()  # refused before anything is written
    r = runner.invoke(app, [*args, "--workers", "two"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "--workers" in r.output, r.output


# --------------------------------------------------------------------------- interrupts


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _count(db: Path) -> int:
    try:
        conn = sqlite3.connect(db, timeout=10)
        try:
            return conn.execute("select count(*) from results").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc (Linux)")
def test_sigterm_keeps_rows_leaves_no_worker_and_resume_completes_only_the_rest(tmp_path, puzzles, model_dir,
                                                                                 serial_db):
    db = tmp_path / "r.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1",
           "COLUMNS": "200"}
    env.pop("SBT_DB", None)
    with open(tmp_path / "stderr", "w") as err:  # a file: a pipe would wait for a surviving worker
        proc = subprocess.Popen([sys.executable, "-c", "from sbt_cli.app import main; main()",
                                 *bench(puzzles, model_dir, db, "--workers", "2")], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while _count(db) < 1:  # the first row: then the signal, long before the last one
            assert proc.poll() is None, (tmp_path / "stderr").read_text()
            assert time.monotonic() < deadline, "no rows written"
            workers |= {p for p in _children(proc.pid) if "spawn_main" in _cmdline(p)}
            time.sleep(0.02)
        workers |= {p for p in _children(proc.pid) if "spawn_main" in _cmdline(p)}
        everything = set(_children(proc.pid))  # the workers and multiprocessing's resource tracker
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert 1 <= len(workers) <= 2  # never more than --workers
    err = (tmp_path / "stderr").read_text()
    assert proc.returncode == 130 and "interrupted" in err and "Re-run the same command" in err, err
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in everything | workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in everything | workers if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"processes outlived the bench: {left}"

    kept = {(r["run_key"], r["puzzle_index"]): r for r in result_rows(db)}
    first = runs(db)
    assert 1 <= len(kept) < 2 * N and first[-1]["status"] == "interrupted", (len(kept), first)
    want = {(r["run_key"], r["puzzle_index"]): r for r in result_rows(serial_db)}
    assert all(want[k] == row for k, row in kept.items())  # the rows written before the signal are whole

    # resume in this process with two workers: only the missing puzzles are searched
    from harness.runner import Bench, plan_matrix
    from harness.store import open_store

    seen: list[int] = []

    class Count:
        def run_started(self, *a):
            pass

        def result(self, spec, run, row):
            seen.append(row["puzzle_index"])

        def run_finished(self, *a):
            pass

    specs = plan_matrix(["self-backtrack", "best-of-n"], [4], [1], [str(model_dir)], extra={"max_new_tokens": [32]})
    with open_store(db) as store:
        outcomes = Bench(store, specs, split=None, puzzles_file=puzzles, observer=Count(), workers=2).run()
    assert [o.status for o in outcomes] == ["done", "done"] and [o.n for o in outcomes] == [N, N]
    assert sum(o.new for o in outcomes) == len(seen) == 2 * N - len(kept)  # nothing done twice
    assert [r["id"] for r in runs(db)][:len(first)] == [r["id"] for r in first]  # the same runs, continued
    assert result_rows(db) == result_rows(serial_db)


def test_a_worker_error_is_one_line_and_fails_the_run(tmp_path, puzzles, model_dir):
    bad = shutil.copytree(model_dir, tmp_path / "broken")
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # passes the preflight, fails to load in the worker
    r = runner.invoke(app, bench(puzzles, bad, tmp_path / "r.db", "--workers", "2"))
    one_error_line(r, "model.safetensors")


# --------------------------------------------------------------------------- harvest


def test_harvest_with_two_workers_writes_the_file_of_one(tmp_path_factory, tmp_path):
    from _train_fixtures import quick_countdown3

    data = quick_countdown3(tmp_path_factory, "workers-harvest", 24)
    # the shipped Countdown-3 model: a random model finds no verified path, and an empty
    # file could not tell a wrong seed from a right one
    files = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}" / "paths.jsonl"
        r = runner.invoke(app, ["harvest", "--out", str(out), "--numbers", "3", "--data", str(data), "--puzzles", "24",
                                "--n", "4", "--mistakes", "2", "--workers", workers, "-q"])
        assert r.exit_code == 0, r.output
        files.append((out.read_bytes(), json.loads(out.with_name("paths.jsonl.json").read_text())))
    (one, one_meta), (two, two_meta) = files
    assert one.count(b"\n") >= 2 and two == one and two_meta == one_meta
    assert one_meta["done"] == 24


# --------------------------------------------------------------------------- torchrun


def _torchrun(tmp_path: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("SBT_DB", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), "--no-python", "--", "sbt", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)


needs_torchrun = pytest.mark.skipif(shutil.which("sbt") is None, reason="needs the sbt entry point (pip install -e .)")


@needs_torchrun
def test_torchrun_ranks_share_the_puzzles_and_rank_0_writes_the_rows_of_one_process(tmp_path, puzzles, model_dir,
                                                                                     serial_db):
    pytest.importorskip("torch.distributed")
    db = tmp_path / "ranks.db"
    r = _torchrun(tmp_path, *bench(puzzles, model_dir, db))
    assert r.returncode == 0, r.stderr[-3000:]
    assert result_rows(db) == result_rows(serial_db)
    assert [x["status"] for x in runs(db)] == ["done", "done"]
    assert r.stdout.count("Leaderboard") == 1  # rank 0 reports; the other rank is quiet


@needs_torchrun
def test_torchrun_with_more_ranks_than_puzzles_is_one_line_exit_2(tmp_path, model_dir):
    one = tmp_path / "one.jsonl"
    one.write_text((REPO / "data" / "countdown4" / "test_new.jsonl").read_text().splitlines()[0] + "\n")
    r = _torchrun(tmp_path, *bench(one, model_dir, tmp_path / "r.db"))
    assert r.returncode != 0
    lines = [x for x in r.stderr.splitlines() if x.startswith("error: ")]
    assert lines and set(lines) == {"error: torchrun started 2 processes (WORLD_SIZE) for 1 puzzle; start at most 1"}
    assert not (tmp_path / "r.db").exists()
