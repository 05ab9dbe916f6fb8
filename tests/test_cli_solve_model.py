"""``sbt solve`` with model-based methods (CliRunner on the Typer app)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from typer.testing import CliRunner

import sbt_core.backends as backends
from sbt_cli.app import app
from sbt_core.backends.scripted import ScriptedBackend, solver_continuation
from sbt_core.trace import BACKTRACK
from _cli import one_error_line

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from sbt_core.tokenizer import build_tokenizer
    from training.model import new_model, save_model

    tok = build_tokenizer()
    return save_model(new_model(tok, "tiny", seed=2), tok, tmp_path_factory.mktemp("cli") / "tiny")


@pytest.fixture
def no_models(tmp_path, monkeypatch):
    monkeypatch.setenv("SBT_MODELS_DIR", str(tmp_path))
    return tmp_path


def test_missing_default_model_is_one_line_exit_2(no_models):
    line = one_error_line(runner.invoke(app, ["solve", "1 2 3 4 -> 24"]))
    assert "countdown4-backtrack" in line and "not found" in line
    line = one_error_line(runner.invoke(app, ["solve", "2 3 5 -> 30", "--method", "greedy"]))
    assert "countdown3-backtrack" in line


def test_bad_model_path_backend_and_method_are_one_line_exit_2(tmp_path, model_dir):
    one_error_line(runner.invoke(app, ["solve", "2 3 5 -> 30", "--model", str(tmp_path / "nope")]))
    (tmp_path / "config.json").write_text("{not json")
    one_error_line(runner.invoke(app, ["solve", "2 3 5 -> 30", "--model", str(tmp_path)]))
    line = one_error_line(runner.invoke(app, ["solve", "2 3 5 -> 30", "--model", str(model_dir), "--backend", "llama"]))
    assert "llama backend" in line
    one_error_line(runner.invoke(app, ["solve", "2 3 5 -> 30", "--method", "magic"]))


def test_exact_needs_no_model(no_models):
    result = runner.invoke(app, ["solve", "2 3 5 -> 30", "--method", "exact", "--json"])
    assert result.exit_code == 0
    out = json.loads(result.stdout)
    assert out["solved"] and out["method"] == "exact" and out["expression"]


def test_json_contract_with_a_tiny_model_and_same_seed_same_output(model_dir):
    args = ["solve", "3 4 5 7 -> 41", "--model", str(model_dir), "--n", "2", "--json", "--trace", "--seed", "4"]
    a, b = runner.invoke(app, args), runner.invoke(app, args)
    assert a.exit_code == b.exit_code == 1  # a random model does not solve it
    out, again = json.loads(a.stdout), json.loads(b.stdout)
    for key in ("puzzle", "method", "solved", "steps", "expression", "stats", "failure", "model", "trace"):
        assert key in out
    assert out["method"] == "self-backtrack" and out["params"]["n"] == 2 and out["params"]["b"] == 1
    assert out["solved"] is False and out["failure"]
    assert out["trace"][0]["event"] == "expand" and out["trace"][-1]["event"] == "done"
    for o in (out, again):
        o["stats"].pop("wall_ms")
        o["trace"][-1]["result"]["stats"].pop("wall_ms")
    assert out == again


def test_live_view_and_plain_failure_message(model_dir):
    result = runner.invoke(app, ["solve", "3 4 5 7 -> 41", "--model", str(model_dir), "--n", "2"])
    assert result.exit_code == 1
    assert "round 0 (start) x2: 2 unfinished" in result.stdout and "no verified answer" in result.stdout
    assert "why it fails" in result.stdout


@pytest.mark.parametrize("method", ["self-backtrack", "greedy", "beam", "best-of-n", "pass@n", "dfs"])
def test_every_method_from_the_cli_with_a_scripted_model(method, monkeypatch):
    monkeypatch.setattr(backends, "load_backend", lambda *a, **k: ScriptedBackend(default=solver_continuation))
    result = runner.invoke(app, ["solve", "3 4 5 7 -> 41", "--method", method])
    assert result.exit_code == 0, result.output
    assert "answer (verified)" in result.stdout and "= 41" in result.stdout


def test_backtracks_are_shown(monkeypatch):
    script = {"": ["7 + 5 = 12\n" + BACKTRACK, "7 * 3 = 21\n5 * 4 = 20\n21 + 20 = 41\nGoal Reached!"]}
    monkeypatch.setattr(backends, "load_backend", lambda *a, **k: ScriptedBackend(script, default=solver_continuation))
    result = runner.invoke(app, ["solve", "3 4 5 7 -> 41", "--n", "2", "--b", "1", "--verbose"])
    assert result.exit_code == 0
    assert "backtrack: drop 7 + 5 = 12" in result.stdout and "candidate" in result.stdout
    # by default one line per expanded state: how its samples ended and its best candidate
    result = runner.invoke(app, ["solve", "3 4 5 7 -> 41", "--n", "2", "--b", "1"])
    assert result.exit_code == 0 and "backtrack: drop" not in result.stdout
    lines = [x for x in result.stdout.splitlines() if x.startswith("round ")]
    assert lines[0].startswith("round 0 (start) x2: 1 goal, 1 backtrack; best candidate: 7 * 3 = 21 | 5 * 4 = 20")
    assert lines[1].startswith("round 1 (start) x2:")  # the root again, rolled back to by "7 + 5 = 12 <backtrack>"
    assert "answer (verified)" in result.stdout


def test_bad_search_parameters_are_one_line_exit_2(monkeypatch):
    monkeypatch.setattr(backends, "load_backend", lambda *a, **k: ScriptedBackend(default=solver_continuation))
    line = one_error_line(runner.invoke(app, ["solve", "3 4 5 7 -> 41", "--n", "0"]))
    assert "n must be at least 1" in line


def test_unsolvable_puzzle_is_one_line_exit_1_before_any_model_loads(no_models):
    line = one_error_line(runner.invoke(app, ["solve", "1 1 1 1 -> 999"]), code=1)
    assert "no solution" in line and "999" in line
    one_error_line(runner.invoke(app, ["solve", "1 1 1 1 -> 999", "--json", "--method", "greedy"]), code=1)


def test_model_search_defaults_sit_between_method_defaults_and_options(model_dir, tmp_path):
    import shutil

    model = shutil.copytree(model_dir, tmp_path / "tuned")

    def params(*extra):
        result = runner.invoke(app, ["solve", "3 4 5 7 -> 41", "--model", str(model), "--n", "2", "--json", *extra])
        assert result.exit_code in (0, 1), result.output
        return json.loads(result.stdout)["params"]

    assert params()["temperature"] == 0.7  # no search_defaults.json: the method's default
    (model / "search_defaults.json").write_text(json.dumps({"temperature": 1.3, "chosen_on": "val"}))
    assert params()["temperature"] == 1.3
    assert params("--temperature", "0.2")["temperature"] == 0.2
    assert "temperature" not in params("--method", "greedy")
    human = runner.invoke(app, ["solve", "3 4 5 7 -> 41", "--model", str(model), "--n", "2"])
    assert "n=2 b=1 T=1.3" in human.stdout.splitlines()[0]
    (model / "search_defaults.json").write_text('{"temperature": "hot"}')
    line = one_error_line(runner.invoke(app, ["solve", "3 4 5 7 -> 41", "--model", str(model)]))
    assert "search_defaults.json" in line


def test_bench_records_the_model_search_defaults(model_dir, tmp_path):
    import shutil
    import sqlite3

    model = shutil.copytree(model_dir, tmp_path / "tuned")
    (model / "search_defaults.json").write_text(json.dumps({"temperature": 1.3}))
    puzzles = tmp_path / "p.jsonl"
    puzzles.write_text('{"numbers": [3, 4, 5, 7], "target": 41}\n')
    db = tmp_path / "r.db"
    result = runner.invoke(app, ["bench", "--puzzles", str(puzzles), "--model", str(model), "--methods",
                                 "self-backtrack,greedy", "--n", "1", "--b", "0", "--db", str(db), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = sqlite3.connect(db).execute("select method, params from runs order by method").fetchall()
    params = {m: json.loads(p) for m, p in rows}
    assert params["self-backtrack"]["temperature"] == 1.3 and "temperature" not in params["greedy"]
