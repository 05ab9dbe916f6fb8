"""Rules as a variant of the game (issue 24): "all" (every number used exactly once, the
paper's) and "any" (TV Countdown: any subset of the numbers; the last step makes the
target). Parser, verifier, solver, generator, prompt, CLI and bench under both, and no
default model for a size or rule set it was not trained for (issue 24 item 3a)."""

from __future__ import annotations

import functools
import itertools
import json
import random
import sqlite3
import time

import pytest
from typer.testing import CliRunner

import sbt_core.generate as gen
from sbt_core import backends, solver
from sbt_core.backends.scripted import ScriptedBackend, solver_continuation
from sbt_core.countdown import OPS, Failure, Puzzle, apply_op, parse_puzzle, verify
from sbt_core.errors import PuzzleError
from sbt_core.generate import GeneratorConfig, generate, read_puzzles
from sbt_core.models import NoModelError, default_model, trained_for
from sbt_core.search import run_search
from sbt_core.search.events import Done, event_from_json
from sbt_core.trace import parse_prompt, prompt

from sbt_cli.app import app
from _cli import one_error_line

runner = CliRunner()
TV = "25 50 75 100 3 6 -> 952"
ANY_ONLY = Puzzle((2, 3, 1000), 6, "any")  # 2 * 3 = 6; with 1000 too no expression makes 6


# --------------------------------------------------------------------------- parser, Puzzle


def test_parse_and_json_carry_the_rules_and_all_is_unchanged():
    p = parse_puzzle(TV, "any")
    assert p == Puzzle((25, 50, 75, 100, 3, 6), 952, "any") and p.rules == "any" and not p.uses_all
    assert parse_puzzle(TV).rules == "all" and parse_puzzle(TV) == Puzzle((25, 50, 75, 100, 3, 6), 952)
    assert parse_puzzle(TV) != p  # another puzzle
    assert Puzzle((2, 3), 5).to_json() == {"numbers": [2, 3], "target": 5}  # as it always was
    assert p.to_json() == {"numbers": [25, 50, 75, 100, 3, 6], "target": 952, "rules": "any"}
    assert Puzzle.from_json(p.to_json()) == p
    assert Puzzle.from_json({"numbers": [2, 3], "target": 5}, "any").rules == "any"  # a line that names none
    with pytest.raises(PuzzleError, match="says rules 'any'"):
        Puzzle.from_json(p.to_json(), "all")
    with pytest.raises(PuzzleError, match="'rules' must be one of all, any"):
        Puzzle.from_json({"numbers": [2, 3], "target": 5, "rules": "some"})
    with pytest.raises(PuzzleError, match="--rules must be one of all, any"):
        parse_puzzle(TV, "tv")


# --------------------------------------------------------------------------- verifier


def test_unused_numbers_verify_under_any_and_fail_under_all_as_today():
    answer = ["75 + 25 = 100"]
    under_all = verify(Puzzle((25, 50, 75, 100, 3, 6), 100), answer)
    assert not under_all.ok and under_all.failure is Failure.UNUSED_NUMBERS  # today's category
    v = verify(Puzzle((25, 50, 75, 100, 3, 6), 100, "any"), answer)
    assert v.ok and v.describe() == "verified: numbers used at most once, target reached"
    assert verify(Puzzle((2, 3, 5), 30), ["2 * 3 = 6", "6 * 5 = 30"]).describe() == \
        "verified: every number used once, target reached"


def test_any_needs_a_step_and_the_last_step_must_make_the_target():
    v = verify(Puzzle((100, 3), 100, "any"), [])  # the target is a number: zero steps do not answer
    assert not v.ok and v.failure is Failure.NO_ANSWER
    assert verify(Puzzle((100, 1, 3), 100, "any"), ["100 * 1 = 100"]).ok
    v = verify(Puzzle((25, 75, 3), 100, "any"), ["75 + 25 = 100", "100 + 3 = 103"])  # went past it
    assert not v.ok and v.failure is Failure.TARGET_NOT_REACHED and "ended at 103" in v.detail


@pytest.mark.parametrize("steps,failure,index", [
    (["25 + 25 = 50"], Failure.UNKNOWN_NUMBER, 0),
    (["75 + 25 = 99"], Failure.INCORRECT_RESULT, 0),
    (["3 - 6 = -3"], Failure.ILLEGAL_OPERATION, 0),
    (["75 / 50 = 1"], Failure.ILLEGAL_OPERATION, 0),
    (["75 + 25 = 100", "what"], Failure.INVALID_FORMAT, 1),
    (["75 + 25 = 100", "100 / 0 = 0"], Failure.UNKNOWN_NUMBER, 1),
])
def test_wrong_steps_fail_alike_under_both_rules(steps, failure, index):
    a = verify(Puzzle((25, 50, 75, 100, 3, 6), 952), steps)
    b = verify(Puzzle((25, 50, 75, 100, 3, 6), 952, "any"), steps)
    assert (a.failure, a.step_index, a.detail) == (b.failure, b.step_index, b.detail) == (failure, index, a.detail)


# --------------------------------------------------------------------------- solver


def test_tv_puzzle_solves_under_any_in_well_under_a_second():
    solver.clear_cache()
    t0 = time.perf_counter()
    p = parse_puzzle(TV, "any")
    steps = solver.solve(p)
    elapsed = time.perf_counter() - t0
    assert steps and verify(p, steps).ok and solver.is_solvable(p.numbers, p.target, "any")
    assert elapsed < 1.0, elapsed


def test_any_solves_what_all_cannot_with_the_fewest_numbers():
    assert not solver.is_solvable(ANY_ONLY.numbers, 6) and solver.solve(Puzzle((2, 3, 1000), 6)) is None
    assert solver.is_solvable(ANY_ONLY.numbers, 6, "any")
    assert [str(s) for s in solver.solve(ANY_ONLY)] == ["3 * 2 = 6"]
    assert solver.solve(Puzzle((1, 2, 3), 100, "any")) is None
    assert not solver.is_solvable((1, 2, 3), 100, "any")
    assert not solver.is_solvable((100, 7), 100, "any")  # a number that is the target needs a step too
    assert solver.is_solvable((100, 0), 100, "any")  # 100 + 0
    with pytest.raises(PuzzleError):
        solver.is_solvable((1, 2), 3, "some")


@functools.lru_cache(maxsize=None)
def _brute_any(state: tuple[int, ...], target: int) -> bool:
    """Every sequence of steps on the available numbers: does one step make the target?"""
    for i, j in itertools.permutations(range(len(state)), 2):
        for op in OPS:
            r = apply_op(state[i], op, state[j])
            if r is None:
                continue
            if r == target:
                return True
            rest = tuple(sorted([x for k, x in enumerate(state) if k not in (i, j)] + [r]))
            if len(rest) >= 2 and _brute_any(rest, target):
                return True
    return False


def test_solver_agrees_with_brute_force_under_any():
    rng = random.Random(24)
    solvable = 0
    for _ in range(250):
        n = rng.choice((2, 3, 4))
        numbers = tuple(rng.randint(0, 13) for _ in range(n))
        target = rng.randint(0, 80)
        p = Puzzle(numbers, target, "any")
        truth = _brute_any(numbers, target)
        assert solver.is_solvable(numbers, target, "any") == truth, p
        steps = solver.solve(p)
        assert (steps is not None) == truth, p
        if truth:
            solvable += 1
            assert verify(p, steps).ok, (p, steps)
            walk = solver.random_solution(p, random.Random(solvable))
            assert verify(p, walk).ok, (p, walk)
            assert solver.first_wrong_step(p, steps) is None
    assert 40 < solvable < 240  # both kinds were checked
    for _ in range(40):  # five small numbers, TV targets: mostly out of reach
        numbers = tuple(sorted(rng.randint(1, 10) for _ in range(5)))
        target = rng.randint(100, 999)
        assert solver.is_solvable(numbers, target, "any") == _brute_any(numbers, target), (numbers, target)


def test_solutions_and_wrong_steps_under_any():
    paths = list(solver.iter_solutions(Puzzle((2, 3, 4), 6, "any")))
    assert paths and all(verify(Puzzle((2, 3, 4), 6, "any"), s).ok for s in paths)
    assert len(paths) == len({tuple(map(str, s)) for s in paths}) == solver.count_solutions(Puzzle((2, 3, 4), 6, "any"))
    assert ["3 * 2 = 6"] in [[str(x) for x in s] for s in paths]  # one step is an answer
    assert solver.count_solutions(Puzzle((2, 3, 4), 6)) < len(paths)
    assert solver.first_wrong_step(ANY_ONLY, ["3 * 2 = 6"]) is None  # the target made: not wrong
    assert solver.first_wrong_step(ANY_ONLY, ["3 + 2 = 5"]) == 0  # 5 and 1000 make no 6
    assert solver.first_wrong_step(ANY_ONLY, ["3 * 2 = 6", "1000 + 6 = 1006"]) == 1
    assert solver.first_wrong_step(Puzzle((2, 3, 1000), 6), ["3 * 2 = 6"]) == 0  # under all: a dead end


# --------------------------------------------------------------------------- generator


def test_generator_any_writes_puzzles_whose_answers_verify_under_any(tmp_path, monkeypatch):
    monkeypatch.setattr(gen, "CHUNK", 25)
    sizes = {"train": 40, "val": 8, "test_seen": 8, "test_new": 8}
    written = generate(GeneratorConfig(n_numbers=4, seed=3, min_target=100, max_target=400, rules="any",
                                       sizes=dict(sizes)), tmp_path / "tv", workers=1)
    assert written == sizes
    meta = json.loads((tmp_path / "tv" / "meta.json").read_text())
    assert meta["rules"] == "any" and meta["min_target"] == 100
    rows = [json.loads(x) for x in (tmp_path / "tv" / "test_new.jsonl").read_text().splitlines()]
    assert all(r["rules"] == "any" for r in rows)
    only_any = 0
    for split in gen.SPLITS:
        for p in read_puzzles(tmp_path / "tv" / f"{split}.jsonl"):
            assert p.rules == "any" and 100 <= p.target <= 400
            assert verify(p, solver.solve(p)).ok
            only_any += not solver.is_solvable(p.numbers, p.target)
    assert only_any  # some of them have no answer that uses every number
    # rules "all": rows and meta.json as they always were (no "rules" key)
    generate(GeneratorConfig(n_numbers=3, seed=3, sizes={"train": 10, "val": 2, "test_seen": 2, "test_new": 2}),
             tmp_path / "all", workers=1)
    assert "rules" not in json.loads((tmp_path / "all" / "meta.json").read_text())
    assert all("rules" not in json.loads(x) for x in (tmp_path / "all" / "train.jsonl").read_text().splitlines())


def test_data_generate_cli_takes_rules_and_target_range(tmp_path, monkeypatch):
    monkeypatch.setattr(gen, "CHUNK", 25)
    out = tmp_path / "tv3"
    res = runner.invoke(app, ["data", "generate", "--numbers", "3", "--rules", "any", "--min-target", "100",
                              "--max-target", "300", "--train", "10", "--val", "2", "--test-seen", "2",
                              "--test-new", "2", "--workers", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert {p.rules for p in read_puzzles(out / "train.jsonl")} == {"any"}
    assert one_error_line(runner.invoke(app, ["data", "generate", "--rules", "some", "--out", str(tmp_path / "x")]))
    line = one_error_line(runner.invoke(app, ["data", "generate", "--numbers", "3", "--rules", "all", "--train", "5",
                                              "--avoid", str(out), "--out", str(tmp_path / "y")]))
    assert "rules 'any'" in line
    # a model trains on it, under its rules (tests/test_data_rules_any.py: the examples)
    res = runner.invoke(app, ["train", "--data-dir", str(out), "--size", "tiny", "--tokens", "1000",
                              "--out", str(tmp_path / "m"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m" / "training.json").read_text())["rules"] == "any"


# --------------------------------------------------------------------------- protocol


def test_prompt_under_all_is_byte_identical_and_any_says_so():
    assert prompt(Puzzle((44, 19, 35, 2), 64)) == "###Question: numbers [44, 19, 35, 2]->target 64\n###Response:\n"
    p = parse_puzzle(TV, "any")
    assert prompt(p) == "###Question: numbers [25, 50, 75, 100, 3, 6]->target 952 (any)\n###Response:\n"
    for q in (p, Puzzle((44, 19, 35, 2), 64)):
        assert parse_prompt(prompt(q) + "1 + 2 = 3\n") == q


def test_search_results_and_traces_carry_any_and_all_json_is_unchanged():
    backend = ScriptedBackend(default=solver_continuation)  # a perfect model: reads the rules from the prompt
    for method in ("self-backtrack", "greedy", "dfs", "exact"):
        r = run_search(method, ANY_ONLY, backend, {"n": 2} if method != "exact" and method != "greedy" else {})
        assert r.solved and r.lines == ["3 * 2 = 6"], (method, r.lines)
        out = r.to_json()
        assert out["rules"] == "any"
        again = event_from_json(Done(r).to_json())
        assert again.result.puzzle == ANY_ONLY and again.result.solved
    r = run_search("exact", Puzzle((2, 3, 5), 30))
    assert "rules" not in r.to_json()


def test_tui_board_reaches_the_target_under_any():
    from tui.state import board

    assert board(ANY_ONLY, ["3 * 2 = 6"]).reached
    assert not board(Puzzle((2, 3, 1000), 6), ["3 * 2 = 6"]).reached
    assert board(Puzzle((2, 3, 5), 30), ["2 * 3 = 6", "6 * 5 = 30"]).reached


# --------------------------------------------------------------------------- models: trained for what


def test_shipped_models_record_what_they_were_trained_for():
    assert trained_for("countdown3-backtrack") == (3, "all") and trained_for("countdown4-sft") == (4, "all")
    assert default_model(3) == "countdown3-backtrack" and default_model(4) == "countdown4-backtrack"
    for n, rules in ((6, "all"), (5, "all"), (2, "all"), (4, "any")):
        with pytest.raises(NoModelError, match="countdown4-backtrack"):
            default_model(n, rules)


def test_a_model_trained_for_six_numbers_any_is_the_default_for_them(tmp_path, monkeypatch):
    data = tmp_path / "data" / "tv6"
    data.mkdir(parents=True)
    (data / "meta.json").write_text(json.dumps({"n_numbers": 6, "rules": "any"}))
    model = tmp_path / "models" / "tv6-backtrack"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "training.json").write_text(json.dumps({"config": {"data_dir": str(data)}}))
    monkeypatch.setenv("SBT_MODELS_DIR", str(model.parent))
    assert trained_for(model) == (6, "any")
    assert default_model(6, "any") == "tv6-backtrack"
    with pytest.raises(NoModelError, match=r"tv6-backtrack \(6 numbers, any\)"):
        default_model(6, "all")


# --------------------------------------------------------------------------- CLI


def test_solve_any_exact_prints_a_verified_answer():
    res = runner.invoke(app, ["solve", TV, "--rules", "any", "--method", "exact", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["solved"] and out["rules"] == "any" and out["failure"] is None
    assert verify(parse_puzzle(TV, "any"), out["steps"]).ok
    res = runner.invoke(app, ["solve", "2 3 1000 -> 6", "--rules", "any", "--method", "exact"])
    assert res.exit_code == 0 and "3 * 2 = 6" in res.stdout and "verified" in res.stdout
    res = runner.invoke(app, ["solve", "2 3 1000 -> 6", "--method", "exact"])  # rules all: no answer
    assert res.exit_code == 1
    res = runner.invoke(app, ["solve", "1 2 3 -> 100", "--rules", "any", "--method", "exact"])
    assert res.exit_code == 1 and "no solution" in res.stdout


def test_default_model_refuses_sizes_and_rules_it_was_not_trained_for(monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(backends, "load_backend", no_load)
    line = one_error_line(runner.invoke(app, ["solve", TV]))
    assert "6-number puzzles" in line and "countdown4-backtrack (4 numbers)" in line
    assert "countdown3-backtrack (3 numbers)" in line and "--method exact" in line
    line = one_error_line(runner.invoke(app, ["solve", "25 5 2 7 -> 92", "--rules", "any", "-m", "greedy"]))
    assert "rules 'any'" in line and "--method exact" in line


def test_a_model_given_by_the_user_runs_any_size(monkeypatch, tmp_path):
    monkeypatch.setattr(backends, "load_backend", lambda *a, **k: ScriptedBackend(default=solver_continuation))
    res = runner.invoke(app, ["solve", TV, "--rules", "any", "--model", str(tmp_path / "mine"), "--n", "2",
                              "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["solved"] and out["rules"] == "any" and verify(parse_puzzle(TV, "any"), out["steps"]).ok


def _runs(db):
    conn = sqlite3.connect(db)
    try:
        return [dict(zip(("id", "key", "rules", "solved"), r)) for r in conn.execute(
            "select runs.id, key, rules, sum(solved) from runs join results on run_id = runs.id group by runs.id "
            "order by runs.id")]
    finally:
        conn.close()


def test_bench_stores_the_rules_of_a_run(tmp_path):
    puzzles = tmp_path / "p.jsonl"
    puzzles.write_text('{"numbers": [2, 3, 1000], "target": 6}\n{"numbers": [25, 75, 3], "target": 100}\n')
    db = tmp_path / "r.db"
    args = ["bench", "--puzzles", str(puzzles), "--methods", "exact", "--db", str(db), "-q"]
    res = runner.invoke(app, [*args, "--rules", "any"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, args)  # rules all: another run of the same file
    assert res.exit_code == 0, res.output
    (any_run, all_run) = _runs(db)
    assert (any_run["rules"], any_run["solved"]) == ("any", 2)
    assert (all_run["rules"], all_run["solved"]) == ("all", 0) and any_run["key"] != all_run["key"]
    res = runner.invoke(app, [*args, "--rules", "any"])  # the same run again: found, nothing new
    assert res.exit_code == 0 and len(_runs(db)) == 2
    # the report tells the two runs apart
    from harness.report import leaderboard
    from harness.store import read_only

    labels = {r.run_id: (r.label, r.rules) for r in read_only(db, leaderboard)}
    assert labels == {any_run["id"]: ("exact rules=any", "any"), all_run["id"]: ("exact", "all")}
    # lines that say "rules": "any" are any-rule puzzles without --rules; a conflicting --rules is refused
    tv = tmp_path / "tv.jsonl"
    tv.write_text('{"numbers": [2, 3, 1000], "target": 6, "rules": "any"}\n')
    res = runner.invoke(app, ["bench", "--puzzles", str(tv), "--methods", "exact", "--db", str(db), "-q"])
    assert res.exit_code == 0, res.output
    assert _runs(db)[-1]["rules"] == "any" and _runs(db)[-1]["solved"] == 1
    line = one_error_line(runner.invoke(app, ["bench", "--puzzles", str(tv), "--methods", "exact", "--rules", "all",
                                              "--db", str(db), "-q"]))
    assert "rules 'any'" in line
    # the default model for any-rule puzzles: none trained, one line, nothing stored
    line = one_error_line(runner.invoke(app, ["bench", "--puzzles", str(tv), "--methods", "greedy", "--db", str(db),
                                              "-q"]))
    assert "--method exact" in line and len(_runs(db)) == 3


def test_bench_default_model_follows_the_puzzles_size(tmp_path, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(backends, "load_backend", no_load)
    data = tmp_path / "tv6"
    data.mkdir()
    (data / "test_new.jsonl").write_text('{"numbers": [25, 50, 75, 100, 3, 6], "target": 952}\n')
    db = tmp_path / "r.db"
    line = one_error_line(runner.invoke(app, ["bench", "--data", str(data), "--methods", "greedy", "--db", str(db),
                                              "-q"]))
    assert "6-number puzzles" in line and "--method exact" in line and not db.exists()


def test_run_key_of_rules_all_is_unchanged():
    from harness.store import run_key

    base = ("exact", {}, None, None, "abc", 0)
    assert run_key(*base) == run_key(*base, None, "all") != run_key(*base, None, "any")
