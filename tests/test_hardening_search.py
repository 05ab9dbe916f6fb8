"""Issue 20 (hardening), search side: every search budget has a documented maximum
(``sbt_core.limits``) and every bad temperature is one line and exit 2, in ``sbt solve``,
``sbt bench`` and ``sbt tui``, before any model loads or any run row is written; usage
errors name the subcommand's help; ``sbt bench --puzzles`` picks the model by the
puzzles' size."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from typer.testing import CliRunner

import _bench_fakes as fakes
import sbt_core.backends as backends
import sbt_core.limits as limits
from harness.runner import Bench, RunSpec, plan_matrix
from harness.store import open_store
from sbt_cli.app import app
from sbt_core.backends.scripted import ScriptedBackend, solver_continuation
from sbt_core.countdown import parse_puzzle
from sbt_core.errors import SbtError
from sbt_core.models import default_model
from sbt_core.search import METHODS, method_params, run_search
from sbt_core.search.common import check_param, resolve_params
from sbt_core.trace import BACKTRACK
from _cli import one_error_line

runner = CliRunner()
MAX = limits.SEARCH_MAXIMUM
BAD_TEMPERATURES = ["nan", "inf", "-inf", "1e-40", "-1", "101"]


@pytest.fixture(autouse=True)
def fake_methods(monkeypatch):
    for name, method in fakes.FAKE_METHODS.items():
        monkeypatch.setitem(METHODS, name, method)


@pytest.fixture
def no_model_loads(monkeypatch, tmp_path):
    """Loading a model fails the test loudly (exit 3 in the CLI): values must be refused first."""
    def refuse(*a, **k):
        raise RuntimeError("a model was loaded")

    monkeypatch.setattr(backends, "load_backend", refuse)
    monkeypatch.setenv("SBT_MODELS_DIR", str(tmp_path / "no-models"))


@pytest.fixture
def scripted(monkeypatch, tmp_path):
    monkeypatch.setattr(backends, "load_backend", lambda *a, **k: ScriptedBackend(default=solver_continuation))
    monkeypatch.setenv("SBT_MODELS_DIR", str(tmp_path / "no-models"))


# --------------------------------------------------------------------------- the one place


def test_limits_module_is_the_one_source_of_the_bounds(monkeypatch):
    import sbt_core.search.common as common

    assert not hasattr(common, "MINIMUM")  # no second copy of the limits
    assert method_params("self-backtrack", {"n": MAX["n"]})["n"] == MAX["n"]
    monkeypatch.setitem(limits.SEARCH_MAXIMUM, "n", 8)
    with pytest.raises(SbtError, match="at most 8"):
        method_params("self-backtrack", {"n": 9})
    with pytest.raises(SbtError, match="at most 8"):
        run_search("pass@n", parse_puzzle("2 3 5 -> 30"), ScriptedBackend(default=solver_continuation), {"n": 9})


@pytest.mark.parametrize("value, message", [
    (MAX["n"] + 1, f"must be at most {MAX['n']}"), (0, "must be at least 1"), (2.5, "whole number"),
    (float("inf"), "whole number"), (float("nan"), "whole number"), ("abc", "whole number"), (True, "whole number"),
    ([8], "whole number"), pytest.param(10**5000, "must be at most 1024, got about 1e5000$", id="huge"),
    pytest.param(-10**400, "must be at least 1, got about -1e400$", id="-huge"),
    pytest.param("x" * 100, "got 'xxxxxxxxxx.*…$", id="long"),
])
def test_check_param_types_bounds_and_finiteness(value, message):
    with pytest.raises(SbtError, match=message):
        method_params("best-of-n", {"n": value}, names=["--{flag}"])


def test_valid_numbers_keep_their_type_so_bench_run_identities_do_not_change():
    assert method_params("self-backtrack", {"temperature": 1, "n": 8.0}) == {
        "n": 8.0, "b": 1, "temperature": 1, "top_k": 0, "max_new_tokens": 96, "max_states": 0}
    assert resolve_params({"n": 4}, {"n": 8.0}) == {"n": 8}  # what a method runs with: cast
    assert check_param("top_k", "7") == 7
    assert method_params("greedy", {"temperature": 0}) == {"max_new_tokens": 96}
    # a value out of range is refused even where the method does not take it
    with pytest.raises(SbtError, match="--n must be at most"):
        method_params("greedy", {"n": 10**9}, names=["--{flag}"])


def test_error_names_where_the_value_came_from():
    with pytest.raises(SbtError, match=r"^--top-k must be at least 0, got -1$"):
        method_params("dfs", {}, {"top_k": -1}, names=[None, "--{flag}"])
    with pytest.raises(SbtError, match=r"^temperature in /m/search_defaults.json must be"):
        method_params("dfs", {"temperature": float("nan")}, names=["{key} in /m/search_defaults.json"])
    with pytest.raises(SbtError, match=r"^parameter width must be a whole number, got 'abc'$"):
        method_params("beam", {"width": "abc"})


# --------------------------------------------------------------------------- sbt solve


@pytest.mark.parametrize("args, limit", [
    (["--n", "1000000000"], f"--n must be at most {MAX['n']}, got 1000000000"),
    (["--b", "1000000000"], f"--b must be at most {MAX['b']}, got 1000000000"),
    (["--method", "beam", "--width", "1000000"], f"--width must be at most {MAX['width']}, got 1000000"),
    (["--method", "dfs", "--nodes", "1000000000"], f"--nodes must be at most {MAX['nodes']}"),
    (["--top-k", "1000000000"], f"--top-k must be at most {MAX['top_k']}"),
    (["--method", "greedy", "--n", "0"], "--n must be at least 1, got 0"),
])
def test_solve_budget_over_its_limit_is_one_line_before_the_model_loads(no_model_loads, args, limit):
    result = runner.invoke(app, ["solve", "2 3 5 -> 30", *args])
    assert limit in one_error_line(result)
    assert result.stdout == ""  # before any output


@pytest.mark.parametrize("value", BAD_TEMPERATURES)
def test_solve_bad_temperature_is_one_line_exit_2(no_model_loads, value):
    line = one_error_line(runner.invoke(app, ["solve", "2 3 5 -> 30", "--temperature", value]))
    assert "--temperature must be 0 or between" in line


@pytest.mark.parametrize("method", ["self-backtrack", "best-of-n", "pass@n", "dfs"])
def test_solve_temperature_0_is_still_greedy(scripted, method):
    result = runner.invoke(app, ["solve", "3 4 5 7 -> 41", "--method", method, "--temperature", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["params"]["temperature"] == 0


def test_solve_bad_model_search_defaults_is_blamed_on_the_file(no_model_loads, tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "search_defaults.json").write_text('{"temperature": 1e-40}')
    line = one_error_line(runner.invoke(app, ["solve", "2 3 5 -> 30", "--model", str(model)]))
    assert "search_defaults.json" in line and "1e-40" in line


def test_self_backtrack_round_is_capped_by_max_samples_per_round(monkeypatch):
    import sbt_core.search.self_backtrack as sb

    # every sample of the root backtracks after a different first step, so round 1 has n states
    lines = [f"{a} + {b} = {a + b}\n{a + b} * 9 = 1\n" + BACKTRACK for a in range(1, 9) for b in range(1, 9)]
    backend = ScriptedBackend({"": lines}, default=BACKTRACK)
    monkeypatch.setattr(sb, "MAX_SAMPLES_PER_ROUND", 64)
    run_search("self-backtrack", parse_puzzle("3 4 5 7 -> 41"), backend, {"n": 16, "b": 1})
    sampled = [states for kind, states, _ in backend.calls if kind == "sample"]
    assert [len(s) for s in sampled] == [1, 64 // 16]
    assert sb.round_cap(16, 0) == 4 and sb.round_cap(16, 2) == 2 and sb.round_cap(1000, 0) == 1


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize("args, where", [
    (["solve", "--n"], "sbt solve --help"),
    (["solve", "2 3 5 -> 30", "--temperature"], "sbt solve --help"),
    (["bench", "report", "--format"], "sbt bench report --help"),
    (["bench", "--split", "val", "report", "--db"], "sbt bench report --help"),
    (["bench", "-m"], "sbt bench --help"),
    (["data", "generate", "--out"], "sbt data generate --help"),
    (["bench", "--bogus", "report"], "sbt bench --help"),
])
def test_usage_error_points_at_the_subcommands_help(args, where):
    line = one_error_line(runner.invoke(app, args))
    assert line.endswith(f"(see '{where}')"), line


# --------------------------------------------------------------------------- sbt bench


def runs_in(db: Path) -> list[tuple]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        return conn.execute("select id, method, status from runs order by id").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


@pytest.fixture
def bench_db(tmp_path, monkeypatch):
    """A results db with one finished fake run; loading a real model is refused."""
    puzzles, db = tmp_path / "p.jsonl", tmp_path / "r.db"
    fakes.make_puzzles(puzzles, 3)
    monkeypatch.setattr(backends, "load_backend", fakes.fake_loader)
    ok = runner.invoke(app, ["bench", "--puzzles", str(puzzles), "-m", "fake", "--n", "4", "--b", "0",
                             "--db", str(db), "-q"])
    assert ok.exit_code == 0, ok.output
    assert len(runs_in(db)) == 1
    return puzzles, db


@pytest.mark.parametrize("args, message", [
    (["-m", "beam", "-p", "width=abc"], "--param width must be a whole number, got 'abc'"),
    (["-m", "dfs", "-p", "nodes=-1"], "--param nodes must be at least 1, got -1"),
    (["-m", "fake", "-p", "n=1e9"], f"--param n must be at most {MAX['n']}, got 1e+09"),
    (["-m", "fake", "-p", "temperature=nan"], "--param temperature must be 0 or between"),
    (["-m", "fake,greedy", "-p", "bogus=1"], "--param bogus: none of the methods"),
    (["-m", "fake", "--n", "1000000000"], f"--n must be at most {MAX['n']}, got 1000000000"),
    (["-m", "fake", "--b", "17"], f"--b must be at most {MAX['b']}, got 17"),
    (["-m", "greedy", "--n", "0"], "--n must be at least 1, got 0"),  # refused even where unused
    pytest.param(["-m", "fake", "-p", "n=" + "9" * 5000], "--param n must be", id="n=9999..."),
    pytest.param(["-m", "fake", "-p", "temperature=" + "9" * 5000], "--param temperature must be", id="t=9999..."),
])
def test_bench_bad_param_writes_no_run_row(bench_db, args, message):
    puzzles, db = bench_db
    before = runs_in(db)
    line = one_error_line(runner.invoke(app, ["bench", "--puzzles", str(puzzles), "--db", str(db), "-q", *args]))
    assert message in line
    assert runs_in(db) == before  # no new (failed) run


@pytest.mark.parametrize("value", BAD_TEMPERATURES)
def test_bench_bad_temperature_is_one_line_and_no_run(bench_db, value):
    puzzles, db = bench_db
    before = runs_in(db)
    line = one_error_line(runner.invoke(app, ["bench", "--puzzles", str(puzzles), "--db", str(db), "-q",
                                              "-m", "fake", "--temperature", value]))
    assert "--temperature must be 0 or between" in line
    assert runs_in(db) == before


def test_bench_preflight_checks_every_runs_params_before_a_row_is_written(tmp_path):
    puzzles = tmp_path / "p.jsonl"
    fakes.make_puzzles(puzzles, 2)
    store = open_store(tmp_path / "r.db")
    try:
        good = RunSpec("fake", (("n", 4),), None)
        bad = RunSpec("fake", (("n", 10**9),), None)
        with pytest.raises(SbtError, match=f"fake: parameter n must be at most {MAX['n']}"):
            Bench(store, [good, bad], split=None, puzzles_file=puzzles).run()
        assert store.runs() == []
    finally:
        store.close()


def test_plan_matrix_names_the_model_search_defaults_file():
    with pytest.raises(SbtError, match="^temperature in M/search_defaults.json must be"):
        plan_matrix(["best-of-n"], [8], [], ["m"], model_defaults=lambda m: {"temperature": float("inf")},
                    model_defaults_name=lambda m: "{key} in M/search_defaults.json")


def write_puzzles(path: Path, puzzles: list[tuple[list[int], int]]) -> Path:
    path.write_text("".join(json.dumps({"numbers": n, "target": t}) + "\n" for n, t in puzzles))
    return path


@pytest.fixture
def loads(monkeypatch):
    """Which (model, n_numbers) the bench loads: a fake backend named like the model it stands for."""
    seen = []

    def loader(model, backend="torch", n_numbers=4):
        seen.append((model, n_numbers))
        return fakes.FakeBackend(model or default_model(n_numbers))

    monkeypatch.setattr(backends, "load_backend", loader)
    return seen


def stored_models(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("select model from runs order by id")]
    finally:
        conn.close()


def test_bench_puzzles_of_3_numbers_without_model_runs_the_3_number_model(tmp_path, loads):
    puzzles = write_puzzles(tmp_path / "p3.jsonl", [([2, 3, 5], 30), ([1, 2, 3], 6)])
    db = tmp_path / "r.db"
    result = runner.invoke(app, ["bench", "--puzzles", str(puzzles), "-m", "fake-model", "--n", "2", "--db", str(db), "-q"])
    assert result.exit_code == 0, result.output
    assert loads == [(None, 3)]
    assert stored_models(db) == ["countdown3-backtrack"]


def test_bench_puzzles_of_mixed_sizes_needs_model(tmp_path, loads):
    puzzles = write_puzzles(tmp_path / "mix.jsonl", [([2, 3, 5], 30), ([1, 2, 3, 4], 24)])
    db = tmp_path / "r.db"
    line = one_error_line(runner.invoke(app, ["bench", "--puzzles", str(puzzles), "-m", "fake-model", "--db", str(db)]))
    assert "mixes puzzles of 3, 4 numbers" in line and "--model" in line
    assert not db.exists() and loads == []
    # with --model it runs; so does a method that needs no model
    ok = runner.invoke(app, ["bench", "--puzzles", str(puzzles), "-m", "fake-model", "--n", "2", "--db", str(db), "-q",
                             "--model", "countdown4-backtrack"])
    assert ok.exit_code == 0, ok.output
    ok = runner.invoke(app, ["bench", "--puzzles", str(puzzles), "-m", "exact", "--db", str(db), "-q"])
    assert ok.exit_code == 0, ok.output


def test_bench_split_without_numbers_is_unchanged(tmp_path, loads):
    data = tmp_path / "data"
    data.mkdir()
    write_puzzles(data / "test_new.jsonl", [([1, 2, 3, 4], 24), ([2, 3, 4, 5], 14)])
    db = tmp_path / "r.db"
    result = runner.invoke(app, ["bench", "--data", str(data), "-m", "fake-model", "--n", "2", "--db", str(db), "-q"])
    assert result.exit_code == 0, result.output
    assert loads == [(None, 4)] and stored_models(db) == ["countdown4-backtrack"]


# --------------------------------------------------------------------------- sbt tui


@pytest.fixture
def app_runs(monkeypatch):
    started = []
    monkeypatch.setattr("tui.app.SbtApp.run", lambda self, *a, **k: started.append(self))
    return started


@pytest.mark.parametrize("args, message", [
    (["--n", "1000000000"], f"--n must be at most {MAX['n']}, got 1000000000"),
    (["--n", "0"], "--n must be at least 1, got 0"),
    (["--b", "1000"], f"--b must be at most {MAX['b']}, got 1000"),
    (["--b", "-1"], "--b must be at least 0, got -1"),
    *[(["--temperature", v], "--temperature must be 0 or between") for v in BAD_TEMPERATURES],
])
def test_tui_checks_budgets_and_temperature_before_the_app_starts(app_runs, args, message):
    line = one_error_line(runner.invoke(app, ["tui", *args]))
    assert message in line
    assert app_runs == []


def test_tui_with_valid_settings_starts(app_runs):
    result = runner.invoke(app, ["tui", "--n", "4", "--b", "2", "--temperature", "0"])
    assert result.exit_code == 0, result.output
    assert len(app_runs) == 1 and app_runs[0].settings.n == 4 and app_runs[0].settings.temperature == 0
