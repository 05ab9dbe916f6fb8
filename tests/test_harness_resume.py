"""The bench runner: the matrix, and crash-resume (kill -9, Ctrl-C, SIGTERM) of `sbt bench`."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

import _bench_fakes as fakes
from harness.runner import Bench, derive_seed, parse_param_options, plan_matrix
from harness.store import open_store
from sbt_core.errors import SbtError
from sbt_core.search import METHODS

N_PUZZLES = 30


@pytest.fixture(autouse=True)
def fake_methods(monkeypatch):
    for name, method in fakes.FAKE_METHODS.items():
        monkeypatch.setitem(METHODS, name, method)


def count_results(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute("select count(*) from results").fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet
        return 0
    finally:
        conn.close()


def wait_for_results(db: Path, proc: subprocess.Popen, at_least: int, timeout: float = 40.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = count_results(db)
        if n >= at_least:
            return n
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"bench ended early (rc {proc.returncode}): {err[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("bench made no progress")


def snapshot(db: Path) -> dict:
    with open_store(db) as s:
        runs = s.runs()
        rows = s.query("select run_id, puzzle_index, solved, steps, numbers from results order by run_id, puzzle_index")
        dupes = s.query("select run_id, puzzle_index, count(*) c from results group by 1, 2 having c > 1")
    return {"runs": runs, "rows": rows, "dupes": dupes}


def logged(log: Path) -> list[str]:
    return [line.split(" ", 1)[1] for line in log.read_text().splitlines()] if log.exists() else []


# --------------------------------------------------------------------------- the matrix


def test_plan_matrix_skips_meaningless_combinations():
    specs = plan_matrix(["greedy", "best-of-n", "self-backtrack", "exact"], [8, 16], [0, 1], ["m1", "m2"], 0.5)
    labels = [(s.model, s.label()) for s in specs]
    per_model = [lab for model, lab in labels if model == "m1"]
    assert per_model == ["greedy", "best-of-n n=8 temperature=0.5", "best-of-n n=16 temperature=0.5",
                         "self-backtrack n=8 b=0 temperature=0.5", "self-backtrack n=8 b=1 temperature=0.5",
                         "self-backtrack n=16 b=0 temperature=0.5", "self-backtrack n=16 b=1 temperature=0.5"]
    assert [lab for model, lab in labels if model is None] == ["exact"]  # once, whatever the models
    assert len(specs) == 2 * 7 + 1
    greedy = next(s for s in specs if s.method == "greedy")
    assert greedy.params_dict == {"max_new_tokens": 96}  # the method's defaults are recorded
    sb = next(s for s in specs if s.method == "self-backtrack")
    assert sb.params_dict["top_k"] == 0 and sb.params_dict["n"] == 8
    beams = plan_matrix(["beam"], [8], [1], [None], extra=parse_param_options(["width=2,4"]))
    assert [s.params_dict["width"] for s in beams] == [2, 4]
    with pytest.raises(SbtError, match="unknown method"):
        plan_matrix(["nope"], [8], [0], [None])
    with pytest.raises(SbtError, match="takes it"):
        plan_matrix(["greedy"], [8], [0], [None], extra={"width": [2]})
    with pytest.raises(SbtError):
        parse_param_options(["width"])


def test_plan_matrix_model_defaults_between_method_defaults_and_options():
    tuned = {"m1": {"temperature": 1.0}}
    specs = plan_matrix(["greedy", "self-backtrack"], [8], [1], ["m1", "m2"], model_defaults=lambda m: tuned.get(m, {}))
    temps = {(s.method, s.model): s.params_dict.get("temperature") for s in specs}
    assert temps == {("greedy", "m1"): None, ("greedy", "m2"): None,
                     ("self-backtrack", "m1"): 1.0, ("self-backtrack", "m2"): 0.7}
    forced = plan_matrix(["self-backtrack"], [8], [1], ["m1"], 0.5, model_defaults=lambda m: tuned.get(m, {}))
    assert forced[0].params_dict["temperature"] == 0.5

def test_bench_in_process_resume_and_models(tmp_path):
    path = tmp_path / "p.jsonl"
    fakes.make_puzzles(path, 12)
    s = open_store(tmp_path / "r.db")
    specs = plan_matrix(["fake-model", "fake"], [2, 4], [0], ["a", "b"])
    assert len(specs) == 2 * 2 + 2
    bench = Bench(s, specs, split=None, puzzles_file=path, seed=3, load_backend=fakes.fake_loader, limit=5)
    out = bench.run()
    assert [o.new for o in out] == [5] * 6 and all(o.status == "done" for o in out)
    runs = s.runs()
    assert {r["model"] for r in runs} == {"a", "b", None}
    assert {r["model_sha256"] for r in runs if r["model"]} == {"sha-a", "sha-b"}
    assert all(r["puzzles_sha256"] and r["versions"] and r["status"] == "done" for r in runs)
    # same bench again: nothing redone; a larger limit continues the same runs
    again = Bench(s, specs, split=None, puzzles_file=path, seed=3, load_backend=fakes.fake_loader, limit=5).run()
    assert [o.new for o in again] == [0] * 6
    more = Bench(s, specs, split=None, puzzles_file=path, seed=3, load_backend=fakes.fake_loader).run()
    assert [o.new for o in more] == [7] * 6 and [o.n for o in more] == [12] * 6
    assert len(s.runs()) == 6
    # a result is a function of (seed, puzzle index) only
    row = s.results(runs[0]["id"], with_trace=True)[3]
    assert json.loads(row["trace"])[-1]["event"] == "done"
    assert derive_seed(3, 3) != derive_seed(3, 4) and derive_seed(3, 3) == derive_seed(3, 3)


def test_a_database_from_before_backend_options_is_resumed(tmp_path, monkeypatch):
    """Runs stored before backend options were part of a run (schema m001, keys without
    options) are found and continued; a run with other options gets a row of its own."""
    import harness.store as store_mod
    from sbt_core.settings import BackendOptions

    class TorchLike(fakes.FakeBackend):  # a loaded backend that reports its resolved options
        backend_name = "torch"

        def __init__(self, model, options=None):
            super().__init__(model)
            self.options = options or BackendOptions()

    path, db = tmp_path / "p.jsonl", tmp_path / "old.db"
    fakes.make_puzzles(path, 6)
    specs = plan_matrix(["fake-model"], [2], [0], ["a"])
    with monkeypatch.context() as old:  # the store as it was: m001 only
        old.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:1])
        old.setattr(store_mod, "KNOWN_MIGRATIONS", {"m001_initial"})
        with open_store(db) as s:
            (first,) = Bench(s, specs, split=None, puzzles_file=path, limit=3,
                             load_backend=lambda m, b, n: TorchLike(m)).run()
            assert "backend_options" not in s.db["runs"].columns_dict
            old_key = s.run(first.run_id)["key"]
    with store_mod.open_store_readonly(db) as s:  # readers need not migrate it
        assert s.schema_version == ["m001_initial"] and len(s.runs()) == 1
    with open_store(db) as s:
        assert s.schema_version == [name for name, _ in store_mod.MIGRATIONS]
        load = lambda m, b, n, options=None: TorchLike(m, options)  # noqa: E731
        (again,) = Bench(s, specs, split=None, puzzles_file=path, load_backend=load).run()
        assert (again.run_id, again.new, again.n) == (first.run_id, 3, 6)  # resumed: only the 3 missing puzzles
        assert s.run(again.run_id)["key"] == old_key and s.run(again.run_id)["backend_options"] is None
        (bf16,) = Bench(s, specs, split=None, puzzles_file=path, load_backend=load,
                        options=BackendOptions(dtype="bfloat16", threads=3)).run()
        assert bf16.run_id != first.run_id and bf16.new == 6
        assert s.run(bf16.run_id)["backend_options"] == '{"dtype":"bfloat16"}'  # threads: speed, not identity


def test_unknown_split_is_a_clear_error(tmp_path):
    s = open_store(":memory:")
    with pytest.raises(SbtError, match="split file not found"):
        Bench(s, plan_matrix(["exact"], [], [], [None]), split="test_new", data=tmp_path).run()
    with pytest.raises(SbtError, match="train split"):
        Bench(s, plan_matrix(["exact"], [], [], [None]), split="train", data=tmp_path).run()


# --------------------------------------------------------------------------- crash-resume


def bench_args(puzzles: Path, db: Path) -> list[str]:
    return ["bench", "--puzzles", str(puzzles), "--methods", "fake", "--n", "8", "--b", "1", "--db", str(db)]


def test_kill_9_then_resume(tmp_path):
    puzzles, db, log = tmp_path / "p.jsonl", tmp_path / "r.db", tmp_path / "log"
    fakes.make_puzzles(puzzles, N_PUZZLES)
    proc = subprocess.Popen(fakes.sbt_cmd(*bench_args(puzzles, db)), env=fakes.sub_env(FAKE_DELAY="0.05", FAKE_LOG=str(log)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_results(db, proc, 8)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    before = snapshot(db)
    k = len(before["rows"])
    assert 8 <= k < N_PUZZLES
    assert len(before["runs"]) == 1 and before["runs"][0]["status"] == "running"  # died without a word
    from harness.report import effective_status

    assert effective_status(before["runs"][0]) == "stopped"  # what the report and `bench runs` show
    assert [r["puzzle_index"] for r in before["rows"]] == list(range(k))
    searched_first = logged(log)
    assert k <= len(searched_first) <= k + 1  # at most the puzzle in flight is lost

    log.unlink()
    done = subprocess.run(fakes.sbt_cmd(*bench_args(puzzles, db)), env=fakes.sub_env(FAKE_LOG=str(log)),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    after = snapshot(db)
    assert len(after["runs"]) == 1 and after["runs"][0]["status"] == "done"
    assert after["runs"][0]["id"] == before["runs"][0]["id"]
    assert len(after["rows"]) == N_PUZZLES and after["dupes"] == []
    assert [r["puzzle_index"] for r in after["rows"]] == list(range(N_PUZZLES))
    assert after["rows"][:k] == before["rows"]  # kept as they were
    rows = [json.loads(line) for line in puzzles.read_text().splitlines()]
    assert [json.loads(r["numbers"]) for r in after["rows"]] == [r["numbers"] for r in rows]
    second = logged(log)
    assert len(second) == N_PUZZLES - k  # finished puzzles were not redone
    assert not set(second) & {f"{' '.join(map(str, r['numbers']))} -> {r['target']}" for r in rows[:k]}

    # the same bench in one go gives the same answers (seeds per puzzle, not per order)
    fresh = tmp_path / "fresh.db"
    one = subprocess.run(fakes.sbt_cmd(*bench_args(puzzles, fresh), "--quiet"), env=fakes.sub_env(),
                         capture_output=True, text=True, timeout=60)
    assert one.returncode == 0, one.stderr
    assert [(r["solved"], r["steps"]) for r in snapshot(fresh)["rows"]] == [(r["solved"], r["steps"]) for r in after["rows"]]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_marks_run_and_exits_130(tmp_path, sig):
    puzzles, db = tmp_path / "p.jsonl", tmp_path / "r.db"
    fakes.make_puzzles(puzzles, N_PUZZLES)
    proc = subprocess.Popen(fakes.sbt_cmd(*bench_args(puzzles, db)), env=fakes.sub_env(FAKE_DELAY="0.05"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_results(db, proc, 5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Re-run the same command" in err
    snap = snapshot(db)
    assert snap["runs"][0]["status"] == "interrupted" and snap["runs"][0]["finished"]
    kept = len(snap["rows"])
    assert kept >= 5
    rerun = subprocess.run(fakes.sbt_cmd(*bench_args(puzzles, db), "--quiet"), env=fakes.sub_env(),
                           capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    snap = snapshot(db)
    assert snap["runs"][0]["status"] == "done" and len(snap["rows"]) == N_PUZZLES and snap["dupes"] == []


def test_real_sbt_entry_point_with_exact(tmp_path):
    puzzles, db = tmp_path / "p.jsonl", tmp_path / "r.db"
    fakes.make_puzzles(puzzles, 6)
    r = subprocess.run(["sbt", "bench", "--puzzles", str(puzzles), "--methods", "exact", "--db", str(db)],
                       env=fakes.sub_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "exact" in r.stdout and "100.0" in r.stdout
    r = subprocess.run(["sbt", "bench", "report", "--db", str(db), "--format", "json"], env=fakes.sub_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    board = json.loads(r.stdout)["leaderboard"]
    assert len(board) == 1 and board[0]["accuracy"] == 1.0 and board[0]["n"] == 6


@pytest.mark.parametrize("terminal", [False, True])
def test_bench_logs_progress_lines_when_stderr_is_not_a_terminal(tmp_path, terminal):
    puzzles, db = tmp_path / "p.jsonl", tmp_path / "r.db"
    fakes.make_puzzles(puzzles, 20)
    env = {**fakes.sub_env(), "TTY_INTERACTIVE": "1" if terminal else "0"}
    r = subprocess.run(["sbt", "bench", "--puzzles", str(puzzles), "--methods", "exact", "--db", str(db)],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("[1/1] #1 exact: ")]
    if terminal:  # the bar, no lines
        assert lines == [] and "20/20" in r.stderr
    else:  # a line at the start, one per 10%, one at the end
        assert lines[0] == "[1/1] #1 exact: 0/20 puzzles, acc -"
        assert lines[-1] == "[1/1] #1 exact: 20/20 puzzles, acc 100.0%, done"
        assert 3 <= len(lines) <= 12


def test_real_methods_on_scripted_backend(tmp_path):
    """The model methods of `sbt solve` through the bench, on a perfect scripted model."""
    from sbt_core.backends.scripted import ScriptedBackend, solver_continuation
    from sbt_core.search.events import event_from_json

    path = tmp_path / "p.jsonl"
    fakes.make_puzzles(path, 4)
    loader = lambda model, backend, n: ScriptedBackend(default=solver_continuation, model_name=model or "perfect")  # noqa: E731
    s = open_store(":memory:")
    specs = plan_matrix(["greedy", "best-of-n", "self-backtrack"], [2], [0, 1], [None])
    out = Bench(s, specs, split=None, puzzles_file=path, load_backend=loader).run()
    assert [(o.spec.label(), o.n, o.solved) for o in out] == [
        ("greedy", 4, 4), ("best-of-n n=2", 4, 4), ("self-backtrack n=2 b=0", 4, 4), ("self-backtrack n=2 b=1", 4, 4)]
    run = s.runs()[2]
    assert run["model"] == "perfect" and run["backend"] == "scripted" and run["model_sha256"] == ""
    rows = s.results(run["id"], with_trace=True)
    assert all(r["tokens"] > 0 and r["model_calls"] >= 1 and r["failure"] is None for r in rows)
    events = [event_from_json(e) for e in json.loads(rows[0]["trace"])]
    assert events[-1].result.solved and events[-1].result.lines == json.loads(rows[0]["steps"])


def test_evaluate_helper_and_default_split_folder(tmp_path):
    from harness.runner import evaluate

    data = tmp_path / "countdown4"
    data.mkdir()
    fakes.make_puzzles(data / "test_seen.jsonl", 6)
    s = open_store(":memory:")
    backend = fakes.FakeBackend("iter1")
    out = evaluate(s, "fake-model", params={"n": 2}, backend_obj=backend, split="test_seen", data=data)
    assert out.n == 6 and 0 <= out.accuracy <= 1 and backend.calls == 6
    run = s.run(out.run_id)
    assert run["split"] == "test_seen" and run["model"] == "iter1" and json.loads(run["params"]) == {"n": 2}
    again = evaluate(s, "fake-model", params={"n": 2}, backend_obj=backend, split="test_seen", data=data)
    assert again.run_id == out.run_id and again.new == 0 and backend.calls == 6
