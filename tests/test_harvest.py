"""``sbt harvest`` (rejection sampling on train puzzles) and ``sbt train --paths`` with
backtracking examples built on the given paths."""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from typer.testing import CliRunner

from harness.harvest import HarvestConfig, best_verified, harvest
from harness.iterate import train_slice
from sbt_cli.app import app
from sbt_core.backends.base import Completion
from sbt_core.backends.scripted import ScriptedBackend
from sbt_core.countdown import Puzzle, verify
from sbt_core.errors import SbtError
from sbt_core.trace import BACKTRACK, GOAL

from _train_fixtures import countdown3_data, half_right

runner = CliRunner()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return countdown3_data(tmp_path_factory, "harvestdata", 40)


def test_best_verified_takes_the_likeliest_verified_answer():
    p = Puzzle((2, 3, 5), 30)
    comps = [Completion("5 * 3 = 15\n15 * 2 = 30\n" + GOAL, [1, 2], [-0.5, -0.5]),
             Completion("5 * 3 = 15\n15 * 2 = 31\n" + GOAL, [1, 2], [-0.01, -0.01]),  # likelier, wrong
             Completion("2 * 3 = 6\n6 * 5 = 30\n" + GOAL, [1, 2], [-0.2, -0.2]),
             Completion("2 * 3 = 6\n6 * 5 = 30\n" + BACKTRACK, [1, 2], [-0.001, -0.001])]  # no goal claim
    steps, count, lp = best_verified(p, comps)
    assert steps == ["2 * 3 = 6", "6 * 5 = 30"] and count == 2 and lp == pytest.approx(-0.2)
    assert best_verified(p, comps[1:2]) == (None, 0, float("-inf"))


def test_harvest_keeps_verified_paths_of_train_puzzles_and_resumes(tmp_path, data_dir):
    cfg = HarvestConfig(model="scripted", numbers=3, data=str(data_dir), puzzles=20, n=3)
    out = tmp_path / "paths.jsonl"
    backend = ScriptedBackend(default=half_right, model_name="scripted")
    summary = harvest(cfg, out, backend, log=lambda m: None)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert summary["done"] == 20 and summary["kept"] == len(rows) > 0
    assert all(r["target"] % 2 == 0 for r in rows)  # only the verified (even-target) answers
    assert all(verify(Puzzle(tuple(r["numbers"]), r["target"]), r["steps"]).ok for r in rows)
    from sbt_core.generate import read_puzzles

    train = read_puzzles(data_dir / "train.jsonl")
    assert all(train[r["train_index"]].target == r["target"] for r in rows)
    assert len({r["train_index"] for r in rows}) == len(rows)  # one line per puzzle
    # a kill after the record: the next run redoes nothing and drops the cut line
    with open(out, "a") as f:
        f.write('{"numbers": [1, 2')
    again = harvest(cfg, out, backend, log=lambda m: None)
    assert again["kept"] == len(rows) and out.read_text().count("\n") == len(rows)
    assert [json.loads(x) for x in out.read_text().splitlines()] == rows
    with pytest.raises(SbtError, match="other settings"):
        harvest(HarvestConfig(**{**cfg.__dict__, "n": 4}), out, backend, log=lambda m: None)
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text("hello\n")
    with pytest.raises(SbtError, match="not written by `sbt harvest`"):
        harvest(cfg, foreign, backend, log=lambda m: None)


def test_harvest_refuses_greedy():
    with pytest.raises(SbtError, match="temperature"):
        HarvestConfig(model="m", numbers=3, data="d", temperature=0)


def test_op_back_examples_are_built_on_the_given_paths(tmp_path):
    from training.data import Recipe, path_examples

    f = tmp_path / "paths.jsonl"
    rows = [{"numbers": [2, 3, 5], "target": 30, "steps": ["2 * 3 = 6", "6 * 5 = 30"]},
            {"numbers": [4, 6, 7], "target": 17, "steps": ["6 + 4 = 10", "10 + 7 = 17"]},
            {"numbers": [2, 3, 5], "target": 30, "steps": ["5 * 3 = 16", "16 * 2 = 32"]}]  # dropped
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, dropped = path_examples(f, recipe=Recipe("op+back", back_ratio=2.0, goal_forcing=0.0), seed=3)
    assert dropped == 1
    ops = [e for e in examples if e.kind == "op"]
    assert [e.response for e in ops] == ["2 * 3 = 6\n6 * 5 = 30\nGoal Reached!", "6 + 4 = 10\n10 + 7 = 17\nGoal Reached!"]
    backs = [e for e in examples if e.kind != "op"]
    assert len(backs) == 4
    for e in backs:
        given = next(r for r in rows if f"target {r['target']}\n" in e.prompt)
        lines = e.response.split("\n")
        assert lines[-1] == BACKTRACK
        prefix, wrong = lines[:-2], lines[-2]
        assert prefix == given["steps"][:len(prefix)]  # a prefix of THE GIVEN path
        assert wrong not in given["steps"][len(prefix):len(prefix) + 1]
    # data "op": one example per path, as before
    assert [e.kind for e in path_examples(f, recipe=Recipe("op"))[0]] == ["op", "op"]


@pytest.mark.parametrize("terminal", [True, False])
def test_sbt_harvest_logs_progress_lines_when_not_on_a_terminal(tmp_path, data_dir, monkeypatch, terminal):
    import sbt_core.backends as backends

    monkeypatch.setattr(backends, "load_backend",
                        lambda model, backend, n: ScriptedBackend(default=half_right, model_name="scripted"))
    monkeypatch.setenv("TTY_INTERACTIVE", "1" if terminal else "0")
    r = runner.invoke(app, ["harvest", "--out", str(tmp_path / "h.jsonl"), "--model", "countdown3-x",
                            "--data", str(data_dir), "--puzzles", "12", "--n", "2"])
    assert r.exit_code == 0, r.output
    assert ("harvest 12/12 puzzles," in r.output) is not terminal, r.output  # a log gets lines, a terminal the bar


def test_sbt_harvest_then_train_on_the_paths_cli(tmp_path, data_dir, monkeypatch):
    import sbt_core.backends as backends

    monkeypatch.setattr(backends, "load_backend",
                        lambda model, backend, n: ScriptedBackend(default=half_right, model_name="scripted"))
    out = tmp_path / "h.jsonl"
    r = runner.invoke(app, ["harvest", "--out", str(out), "--model", "countdown3-x", "--data", str(data_dir),
                            "--puzzles", "12", "--n", "2", "-q"])
    assert r.exit_code == 0, r.output
    kept = out.read_text().count("\n")
    assert f"{kept:,} verified paths from 12 train puzzles" in r.output
    meta = json.loads(out.with_name("h.jsonl.json").read_text())
    assert meta["settings"]["numbers"] == 3 and meta["settings"]["n"] == 2 and meta["done"] == 12
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "m"), "--numbers", "3", "--data-dir", str(data_dir),
                            "--paths", str(out), "--size", "tiny", "--tokens", "400", "--batch-size", "4",
                            "--eval-every", "1000", "--eval-puzzles", "2", "--threads", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "m" / "training.json").read_text())
    assert report["data"]["given_paths"]["kept"] == kept
    assert report["data"]["examples"] > kept  # op+back by default: backtracking examples on the paths
    assert report["data"]["extra_puzzles"] is None
    # --extra-puzzles: the solver paths of more puzzles (e.g. small numbers) on top of the paths
    extra = tmp_path / "small.jsonl"
    extra.write_text('{"numbers": [2, 3, 5], "target": 30}\n{"numbers": [1, 2, 4], "target": 12}\n')
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "mx"), "--numbers", "3", "--data-dir", str(data_dir),
                            "--paths", str(out), "--extra-puzzles", str(extra), "--data", "op", "--size", "tiny",
                            "--tokens", "400", "--batch-size", "4", "--eval-every", "1000", "--eval-puzzles", "2",
                            "--threads", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    mx = json.loads((tmp_path / "mx" / "training.json").read_text())["data"]
    assert mx["extra_puzzles"] == {"file": str(extra), "puzzles": 2, "examples": 2}  # data op: one each
    assert mx["examples"] == kept + 2
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "my"), "--numbers", "3", "--data-dir", str(data_dir),
                            "--extra-puzzles", str(tmp_path / "nope.jsonl"), "--size", "tiny", "--quiet"])
    assert r.exit_code == 2 and "extra puzzles file not found" in r.output
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "m2"), "--numbers", "3", "--data-dir", str(data_dir),
                            "--paths", str(tmp_path / "missing.jsonl"), "--size", "tiny", "--quiet"])
    assert r.exit_code == 2 and "paths file not found" in r.output


def test_gzipped_paths_file_and_a_truncated_one(tmp_path):
    import gzip

    from training.data import path_examples

    rows = [{"numbers": [i, 1], "target": i + 1, "steps": [f"{i} + 1 = {i + 1}"]} for i in range(1, 3001)]
    f = tmp_path / "paths.jsonl.gz"
    with gzip.open(f, "wt") as g:
        g.write("".join(json.dumps(row) + "\n" for row in rows))  # 3000 distinct puzzles
    examples, dropped = path_examples(f)
    assert len(examples) == 3000 and dropped == 0
    f.write_bytes(f.read_bytes()[:-40])
    with pytest.raises(SbtError, match="cannot read paths file"):
        path_examples(f)


def test_harvest_puzzles_can_grow_or_shrink_on_resume(tmp_path, data_dir):
    backend = ScriptedBackend(default=half_right, model_name="scripted")
    full = tmp_path / "full.jsonl"
    harvest(HarvestConfig(model="s", numbers=3, data=str(data_dir), puzzles=24, n=2), full, backend, log=lambda m: None)
    part = tmp_path / "part.jsonl"
    harvest(HarvestConfig(model="s", numbers=3, data=str(data_dir), puzzles=24, n=2), part, backend, log=lambda m: None)
    cut = harvest(HarvestConfig(model="s", numbers=3, data=str(data_dir), puzzles=10, n=2), part, backend, log=lambda m: None)
    first10 = {r["train_index"] for r in train_slice(data_dir, 10, 0, 1)}
    rows = [json.loads(x) for x in part.read_text().splitlines()]
    assert cut["done"] == 10 and {r["train_index"] for r in rows} <= first10
    assert cut["kept"] == len(rows) == sum(1 for x in full.read_text().splitlines()
                                         if json.loads(x)["train_index"] in first10)
    grown = harvest(HarvestConfig(model="s", numbers=3, data=str(data_dir), puzzles=24, n=2), part, backend, log=lambda m: None)
    assert grown["done"] == 24 and part.read_text() == full.read_text()


def test_first_wrong_step_finds_the_first_error_of_every_kind():
    from sbt_core.countdown import parse_step
    from sbt_core.solver import first_wrong_step

    p = Puzzle((2, 3, 5), 30)

    def first(*lines):
        return first_wrong_step(p, [parse_step(x) for x in lines])

    assert first("2 * 3 = 6", "6 * 5 = 30") is None  # verified
    assert first("2 * 3 = 6") is None  # stops early, nothing wrong yet
    assert first("2 * 3 = 7", "7 * 5 = 35") == 0  # wrong arithmetic
    assert first("2 * 3 = 6", "6 * 5 = 31") == 1
    assert first("2 + 3 = 5", "5 * 5 = 25") == 0  # a correct step into a dead end
    assert first("2 * 9 = 18") == 0  # 9 is not available
    assert first("3 - 5 = -2") == 0  # illegal operation
    assert first("2 * 3 = 6", "oops") == 1  # not a step
    # without dead ends, the first wrong step is the strict verifier's step index
    assert verify(p, [parse_step("2 + 3 = 5"), parse_step("5 * 5 = 30")]).step_index == 1


def test_a_false_claim_is_cut_at_its_lie_else_at_its_dead_end():
    from sbt_core.countdown import parse_step
    from sbt_core.solver import false_claim_cut

    p = Puzzle((2, 3, 5), 30)
    assert false_claim_cut(p, [parse_step("2 + 3 = 5"), parse_step("5 * 5 = 30")]) == 1  # dead end, then the lie
    assert false_claim_cut(p, [parse_step("2 + 3 = 5"), parse_step("5 * 5 = 25")]) == 0  # no lie: the dead end
    assert false_claim_cut(p, [parse_step("2 * 3 = 6"), parse_step("6 * 5 = 30")]) is None


def _confident_liar(puzzle, prefix):
    """Half right like half_right, but on odd targets a confident wrong-arithmetic answer."""
    if puzzle.target % 2 == 0:
        return half_right(puzzle, prefix)
    a, b, c = puzzle.numbers[:3]
    return f"{a} + {b} = {a + b + 1}\n{a + b + 1} + {c} = {puzzle.target}\n{GOAL}"


def test_own_mistakes_are_cut_after_the_first_wrong_step_likeliest_first():
    from harness.harvest import own_mistakes

    p = Puzzle((2, 3, 5), 30)
    comps = [Completion("2 * 3 = 7\n7 * 5 = 30\n" + GOAL, [1], [-0.5]),
             Completion("2 * 3 = 6\n6 * 5 = 31\n" + GOAL, [1], [-0.1]),
             Completion("2 * 3 = 7\n7 * 4 = 30\n" + GOAL, [1], [-0.05]),  # same first error, likelier
             Completion("2 * 3 = 6\n6 * 5 = 30\n" + GOAL, [1], [-0.01]),  # verified: not a mistake
             Completion("2 * 3 = 7\n" + BACKTRACK, [1], [-0.01]),  # backtracked: not a false claim
             Completion("2 * 3 = 6\n" + GOAL, [1], [-0.01]),  # no wrong step to cut at
             Completion("2 + 3 = 5\n5 * 5 = 30\n" + GOAL, [1], [-0.2])]  # a dead end, then the lie
    assert own_mistakes(p, comps, 5) == [["2 * 3 = 7"], ["2 * 3 = 6", "6 * 5 = 31"], ["2 + 3 = 5", "5 * 5 = 30"]]
    assert own_mistakes(p, comps, 1) == [["2 * 3 = 7"]]
    assert own_mistakes(p, comps, 0) == []


def test_harvest_keeps_own_mistakes_and_train_makes_backtracking_examples_of_them(tmp_path, data_dir):
    from training.data import Recipe, path_examples

    backend = ScriptedBackend(default=_confident_liar, model_name="scripted")
    cfg = HarvestConfig(model="s", numbers=3, data=str(data_dir), puzzles=20, n=2, mistakes=2)
    out = tmp_path / "m.jsonl"
    summary = harvest(cfg, out, backend, log=lambda m: None)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    odd = [r for r in rows if r["target"] % 2]
    assert odd and all(r["steps"] is None and len(r["mistakes"]) == 1 for r in odd)
    assert all(r["steps"] and r["mistakes"] == [] for r in rows if r["target"] % 2 == 0)
    assert summary["kept"] == len(rows) - len(odd) and summary["mistakes"] == len(odd)
    # resuming counts the same (a mistakes-only line is not a kept path)
    again = harvest(cfg, out, backend, log=lambda m: None)
    assert (again["kept"], again["mistakes"]) == (summary["kept"], summary["mistakes"])

    examples, dropped = path_examples(out, recipe=Recipe("op+back", goal_forcing=0.0), seed=1)
    own = [e for e in examples if e.kind == "own-error"]
    assert dropped == 0 and len(own) == len(odd)
    for e in own:
        wrong = e.response.split("\n")[0]
        assert e.response == wrong + "\n" + BACKTRACK
        assert e.masked == [(0, len(e.prompt) + len(wrong) + 1)]  # only <backtrack> (and eos) trained
    assert not [e for e in path_examples(out, recipe=Recipe("op+back", own_errors=0.0))[0] if e.kind == "own-error"]
    assert [e.kind for e in path_examples(out, recipe=Recipe("op"))[0]] == ["op"] * summary["kept"]


def test_a_mistake_that_is_not_cut_at_its_first_error_is_dropped(tmp_path):
    from training.data import Recipe, path_examples

    f = tmp_path / "paths.jsonl"
    rows = [{"numbers": [2, 3, 5], "target": 30, "steps": None,
             "mistakes": [["2 * 3 = 7", "7 * 5 = 35"],  # wrong already at its first step
                          ["2 * 3 = 6", "6 * 5 = 30"],  # nothing wrong
                          ["2 * 3 = 6", "6 * 5 = 31"]]}]  # kept
    f.write_text(json.dumps(rows[0]) + "\n")
    examples, dropped = path_examples(f, recipe=Recipe("op+back"))
    assert dropped == 0 and [e.response for e in examples] == ["2 * 3 = 6\n6 * 5 = 31\n" + BACKTRACK]
    f.write_text(json.dumps({**rows[0], "mistakes": 5}) + "\n")  # not a list: nothing to train on
    assert path_examples(f, recipe=Recipe("op+back")) == ([], 1)


def test_a_harvest_record_from_before_mistakes_resumes(tmp_path, data_dir):
    backend = ScriptedBackend(default=half_right, model_name="scripted")
    cfg = HarvestConfig(model="s", numbers=3, data=str(data_dir), puzzles=10, n=2)
    out = tmp_path / "old.jsonl"
    harvest(cfg, out, backend, log=lambda m: None)
    meta = out.with_name("old.jsonl.json")
    saved = json.loads(meta.read_text())
    del saved["settings"]["mistakes"]  # as written before the option existed
    meta.write_text(json.dumps(saved))
    grown = harvest(HarvestConfig(**{**cfg.__dict__, "puzzles": 16}), out, backend, log=lambda m: None)
    assert grown["done"] == 16
    with pytest.raises(SbtError, match="other settings"):
        harvest(HarvestConfig(**{**cfg.__dict__, "mistakes": 1}), out, backend, log=lambda m: None)


def test_a_harvest_with_other_backend_options_does_not_resume_the_file(tmp_path, data_dir):
    from sbt_core.settings import BackendOptions

    cfg = HarvestConfig(model="scripted", numbers=3, data=str(data_dir), puzzles=8, n=2)
    out = tmp_path / "paths.jsonl"

    def backend(**options):
        b = ScriptedBackend(default=half_right, model_name="scripted")
        b.backend_name = "torch"  # a torch model's identity: dtype, device and implementation count
        b.options = BackendOptions(**options)
        return b

    harvest(cfg, out, backend(), log=lambda m: None)
    harvest(cfg, out, backend(), log=lambda m: None)  # same options: resumes
    with pytest.raises(SbtError, match="other settings.*backend_options"):
        harvest(cfg, out, backend(dtype="bfloat16"), log=lambda m: None)
