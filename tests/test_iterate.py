"""``sbt iterate`` (expert iteration) and training on given paths (``TrainConfig.paths_file``).

The end-to-end tests train and evaluate a real tiny model; an untrained tiny model finds no
answer, so the search over train puzzles uses a scripted model (``search_factory``) that is
right on even targets and confidently wrong on odd ones: the rounds then have verified and
unverified answers to tell apart. ``test_torch_search_with_nothing_verified`` runs the search
with the real model too.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from typer.testing import CliRunner

import harness.iterate as hit
from harness.iterate import IterateConfig, Iteration, train_slice, verified_paths
from harness.store import open_store
from sbt_cli.app import app
from sbt_core.backends.scripted import ScriptedBackend
from sbt_core.countdown import Puzzle, verify
from sbt_core.generate import read_puzzles

from _train_fixtures import countdown3_data, half_right

runner = CliRunner()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return countdown3_data(tmp_path_factory, "iterdata", 30)


@pytest.fixture(scope="module")
def start_model(tmp_path_factory):
    from sbt_core.tokenizer import build_tokenizer
    from training.model import new_model, save_model

    tok = build_tokenizer()
    return save_model(new_model(tok, "tiny", seed=1), tok, tmp_path_factory.mktemp("itermodel") / "tiny-start")


@pytest.fixture
def search_calls(monkeypatch):
    """Search with the scripted half-right model (named and hashed like the real one); evaluate with torch."""
    from sbt_core.models import model_sha256

    calls = []
    real = hit.torch_backend_factory

    def factory(path, label, role):
        calls.append((label, role))
        if role == "search":
            b = ScriptedBackend(default=half_right, model_name=label)
            b.model_sha256 = model_sha256(path)
            return b
        return real(path, label, role)

    monkeypatch.setattr(hit, "torch_backend_factory", factory)
    return calls


def keys(path) -> set:
    return {p.key for p in read_puzzles(path)}


def cli_args(start_model, data_dir, tmp_path, rounds=2, *extra):
    return ["iterate", "--model", str(start_model), "--numbers", "3", "--data", str(data_dir), "--rounds", str(rounds),
            "--train-puzzles", "6", "--n", "2", "--b", "1", "--eval-limit", "3", "--tokens", "2000",
            "--batch-size", "8", "--out", str(tmp_path / "out"), "--db", str(tmp_path / "r.db"),
            "--experiment", "t", "-q", *extra]


# --------------------------------------------------------------------------- given paths (training)


def test_path_examples_keep_only_verified_paths(tmp_path):
    from training.data import path_examples

    f = tmp_path / "paths.jsonl"
    lines = [
        {"numbers": [2, 3, 5], "target": 30, "steps": ["5 * 3 = 15", "15 * 2 = 30"]},  # ok
        {"numbers": [2, 3, 5], "target": 30, "steps": ["5 * 3 = 16", "16 * 2 = 32"]},  # wrong result
        {"numbers": [2, 3, 5], "target": 30, "steps": ["5 * 3 = 15"]},  # unfinished
        {"numbers": [2, 3, 5], "target": 30, "steps": "5 * 3 = 15"},  # not a list
        {"numbers": [2, 3, 5], "target": 30},  # no steps
        {"numbers": [2, 3, 5], "target": 30, "steps": ["5 times 3"]},  # unparsable
        {"target": 30, "steps": []},  # not a puzzle
    ]
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n\n"
                 + json.dumps({"numbers": [4, 6], "target": 10, "steps": ["6 + 4 = 10"]}) + "\n")
    examples, dropped = path_examples(f)
    assert dropped == 7
    assert [e.kind for e in examples] == ["op", "op"]
    assert examples[0].response == "5 * 3 = 15\n15 * 2 = 30\nGoal Reached!"
    assert examples[1].response == "6 + 4 = 10\nGoal Reached!"
    assert path_examples(f, limit=1)[0] == examples[:1]


def test_train_on_given_paths(tmp_path, data_dir):
    from training.sft import TrainConfig, train

    f = tmp_path / "paths.jsonl"
    rows = [{"numbers": [2, 3, 5], "target": 30, "steps": ["5 * 3 = 15", "15 * 2 = 30"]},
            {"numbers": [2, 3, 5], "target": 30, "steps": ["5 * 3 = 15", "15 * 2 = 31"]}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(out=str(tmp_path / "m"), data_dir=str(data_dir), data="op", size="tiny", paths_file=str(f),
                      max_tokens=500, batch_size=4, warmup_steps=1, eval_every=1000, eval_puzzles=2, threads=1)
    report = train(cfg, log=lambda m: None)
    assert report["data"]["examples"] == 1 and report["data"]["train_file"] == str(f)
    assert report["data"]["given_paths"] == {"file": str(f), "kept": 1, "dropped": 1, "duplicates": 0,
                                                "own_errors": 0}
    f.write_text(json.dumps(rows[1]) + "\n")
    from sbt_core.errors import SbtError

    with pytest.raises(SbtError, match="no verified paths"):
        train(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "m2")}), log=lambda m: None)


# --------------------------------------------------------------------------- pieces


def test_train_slices_come_from_train_and_differ_per_round(data_dir):
    train, held = keys(data_dir / "train.jsonl"), set()
    for split in ("val", "test_seen", "test_new"):
        held |= keys(data_dir / f"{split}.jsonl")
    r1, r2 = train_slice(data_dir, 6, 0, 1), train_slice(data_dir, 6, 0, 2)
    for rows in (r1, r2):
        ks = {Puzzle(tuple(r["numbers"]), r["target"]).key for r in rows}
        assert len(rows) == 6 and ks <= train and not ks & held
        assert all(r["split"] == "train" and r["id"].startswith("train-") for r in rows)
    assert not {r["train_index"] for r in r1} & {r["train_index"] for r in r2}
    assert train_slice(data_dir, 6, 0, 1) == r1 and train_slice(data_dir, 6, 1, 1) != r1


def test_train_slice_refuses_a_leak_into_test(tmp_path, data_dir):
    from sbt_core.errors import SbtError

    d = tmp_path / "leaky"
    d.mkdir()
    (d / "train.jsonl").write_text((data_dir / "train.jsonl").read_text())
    (d / "test_new.jsonl").write_text((data_dir / "train.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(SbtError, match="evaluation split"):
        train_slice(d, 30, 0, 1)


def test_search_keeps_only_verified_answers_scripted(tmp_path, data_dir):
    """Search with a ScriptedBackend: right on even targets, wrong (but claiming the goal) on odd ones."""
    store = open_store(":memory:")
    cfg = IterateConfig(model="unused", experiment="x", out=tmp_path, numbers=3, data=data_dir, train_puzzles=12,
                        n=2, b=1)
    it = Iteration(cfg, store, log=lambda m: None,
                   backend_factory=lambda path, label, role: ScriptedBackend(default=half_right, model_name=label))
    (tmp_path / "round1").mkdir()
    out, slice_file = it.search(1, tmp_path / "start", 0, tmp_path / "round1")
    puzzles = read_puzzles(slice_file)
    assert out.n == 12 and out.status == "done"
    paths = verified_paths(store, out.run_id)
    even = [p for p in puzzles if p.target % 2 == 0]
    assert 0 < len(even) < len(puzzles)  # the slice has both kinds
    assert len(paths) == len(even) == out.solved
    assert {(tuple(p["numbers"]), p["target"]) for p in paths} == {(p.numbers, p.target) for p in even}
    for p in paths:
        assert verify(Puzzle(tuple(p["numbers"]), p["target"]), p["steps"]).ok
    # an answer stored as solved but whose steps do not verify is still dropped
    store.db.execute("update results set steps = '[\"1 + 1 = 2\"]' where run_id = ? and solved = 1 "
                     "and puzzle_index = (select min(puzzle_index) from results where solved = 1)", [out.run_id])
    assert len(verified_paths(store, out.run_id)) == len(even) - 1
    run = store.run(out.run_id)
    assert run["split"] is None and run["puzzles"] == str(slice_file) and run["method"] == "self-backtrack"


# --------------------------------------------------------------------------- end to end


def test_sbt_iterate_end_to_end_and_resume(tmp_path, data_dir, start_model, search_calls):
    out, db = tmp_path / "out", tmp_path / "r.db"
    r = runner.invoke(app, cli_args(start_model, data_dir, tmp_path, rounds=1))
    assert r.exit_code == 0, r.output
    r1_model = out / "round1" / "model"
    r1_mtime = (r1_model / "model.safetensors").stat().st_mtime_ns
    with open_store(db) as s:
        first = {row["round"]: row for row in s.iterations("t")}
    assert sorted(first) == [0, 1]

    r = runner.invoke(app, cli_args(start_model, data_dir, tmp_path, rounds=2))
    assert r.exit_code == 0, r.output
    assert "Expert iteration" in r.stdout and "fast %" in r.stdout and "slow %" in r.stdout
    train_keys = keys(data_dir / "train.jsonl")
    eval_keys = keys(data_dir / "test_new.jsonl") | keys(data_dir / "test_seen.jsonl") | keys(data_dir / "val.jsonl")
    with open_store(db) as s:
        rows = {row["round"]: row for row in s.iterations("t")}
        assert sorted(rows) == [0, 1, 2] and all(row["status"] == "done" for row in rows.values())
        assert rows[1]["finished"] == first[1]["finished"]  # round 1 was not redone
        assert (r1_model / "model.safetensors").stat().st_mtime_ns == r1_mtime
        assert rows[0]["base_model"] is None and rows[0]["n_train_paths"] is None
        slices = []
        for k in (1, 2):
            row = rows[k]
            mdir = out / f"round{k}" / "model"
            assert row["model"] == str(mdir) and (mdir / "config.json").is_file()
            assert row["base_model"] == str(start_model.resolve())  # --restart-from base
            params = json.loads(row["params"])
            assert params["search_model"] == (str(start_model.resolve()) if k == 1 else str(out / "round1" / "model"))
            # the search ran on TRAIN puzzles: its puzzle file is this round's slice of train.jsonl
            search = s.run(row["search_run_id"])
            slice_file = out / f"round{k}" / "search-train.jsonl"
            assert search["split"] is None and search["puzzles"] == str(slice_file)
            assert search["method"] == "self-backtrack" and json.loads(search["params"])["n"] == 2
            ks = keys(slice_file)
            assert ks <= train_keys and not ks & eval_keys and len(ks) == 6 == row["n_search_puzzles"]
            slices.append(ks)
            # only verified answers were trained on
            paths = [json.loads(x) for x in (out / f"round{k}" / "paths.jsonl").read_text().splitlines()]
            assert len(paths) == row["n_train_paths"] == sum(1 for _, t in ks if t % 2 == 0) > 0
            report = json.loads((mdir / "training.json").read_text())
            assert report["data"]["given_paths"]["kept"] == len(paths)
            assert report["config"]["base_model"] == str(start_model.resolve())
        assert slices[0] != slices[1]
        for k in (0, 1, 2):  # fast and slow evaluations on test_new, stored as runs
            fast, slow = s.run(rows[k]["fast_run_id"]), s.run(rows[k]["slow_run_id"])
            assert (fast["method"], slow["method"]) == ("greedy", "self-backtrack")
            assert fast["split"] == slow["split"] == "test_new" and fast["n_puzzles"] == 3
            assert rows[k]["fast_acc"] == s.count_results(fast["id"])[1] / 3
        n_runs = len(s.runs())
    # the round-1 search used the starting model, round 2's the round-1 model
    assert [c for c in search_calls if c[1] == "search"] == [("tiny-start", "search"), ("t-round1", "search")]

    # everything done: a re-run does nothing new
    search_calls.clear()
    r = runner.invoke(app, cli_args(start_model, data_dir, tmp_path, rounds=2))
    assert r.exit_code == 0, r.output
    assert search_calls == []
    with open_store(db) as s:
        assert len(s.runs()) == n_runs
        assert {row["round"]: row["finished"] for row in s.iterations("t")} == {k: v["finished"] for k, v in rows.items()}

    # other settings under the same experiment name are refused
    r = runner.invoke(app, cli_args(start_model, data_dir, tmp_path, 2, "--temperature", "1.0"))
    assert r.exit_code == 2 and "temperature" in r.stderr and "--experiment" in r.stderr
    # the fine-tuning data too (--data op+back; the folder then goes to --data-dir)
    args = ["--data-dir" if a == "--data" else a for a in cli_args(start_model, data_dir, tmp_path, 2)]
    r = runner.invoke(app, [*args, "--data", "op+back"])
    assert r.exit_code == 2 and "train_data='op' (now 'op+back')" in r.stderr
    # --data op+back keeps backtracking examples, built on the verified paths
    r = runner.invoke(app, [*args, "--data", "op+back", "--rounds", "1", "--experiment", "t2", "--out", str(tmp_path / "o2")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "o2" / "round1" / "model" / "training.json").read_text())
    assert report["config"]["data"] == "op+back" and report["data"]["given_paths"]["kept"] > 0
    with open_store(db) as s:
        assert json.loads(s.iterations("t2")[1]["params"])["train_data"] == "op+back"


def test_interrupted_round_resumes_its_stored_search(tmp_path, data_dir, start_model, search_calls):
    store = open_store(tmp_path / "r.db")
    cfg = IterateConfig(model=str(start_model), experiment="i", out=tmp_path / "out", numbers=3, data=data_dir,
                        rounds=1, train_puzzles=6, n=2, b=1, eval_limit=2, tokens=2000, batch_size=8,
                        restart_from="previous")

    def stop(info):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Iteration(cfg, store, log=lambda m: None, on_train_step=stop).run()
    assert store.iterations("i")[1]["status"] == "running"
    search_runs = store.runs("puzzles like ?", ["%search-train.jsonl"])
    assert len(search_runs) == 1
    done_before = store.count_results(search_runs[0]["id"])
    rows = Iteration(cfg, store, log=lambda m: None).run()
    assert [r["status"] for r in rows] == ["done", "done"]
    assert rows[1]["search_run_id"] == search_runs[0]["id"] and store.count_results(rows[1]["search_run_id"]) == done_before
    assert rows[1]["base_model"] == str(start_model.resolve())  # round 1 of --continue starts from the start model
    store.close()


def test_torch_search_with_nothing_verified(tmp_path, data_dir, start_model):
    """The real (untrained) tiny model searches too; it verifies nothing: one error line, round failed."""
    r = runner.invoke(app, cli_args(start_model, data_dir, tmp_path, 1))
    assert r.exit_code == 2, r.output
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: round 1: no verified search answer") and "train puzzles" in last
    with open_store(tmp_path / "r.db") as s:
        rows = {row["round"]: row for row in s.iterations("t")}
        assert rows[0]["status"] == "done" and rows[1]["status"] == "failed"
        (search,) = s.runs("puzzles like ?", ["%search-train.jsonl"])
        assert search["backend"] == "torch" and search["model"] == "tiny-start" and search["status"] == "done"
        assert s.count_results(search["id"]) == (6, 0)


def test_ctrl_c_in_the_search_exits_130_and_the_rerun_continues(tmp_path, data_dir, start_model, search_calls,
                                                                 monkeypatch):
    factory = hit.torch_backend_factory  # the fixture's: scripted search, torch evaluation
    state = {"calls": 0}

    class Interrupting(ScriptedBackend):
        def sample(self, *a, **k):
            state["calls"] += 1
            if state["calls"] == 4:
                raise KeyboardInterrupt
            return super().sample(*a, **k)

    def interrupting(path, label, role):
        b = factory(path, label, role)
        if role == "search":
            b.__class__ = Interrupting
        return b

    monkeypatch.setattr(hit, "torch_backend_factory", interrupting)
    r = runner.invoke(app, cli_args(start_model, data_dir, tmp_path, 1))
    assert r.exit_code == 130, r.output
    assert "Re-run the same command" in r.stderr
    with open_store(tmp_path / "r.db") as s:
        assert {row["round"]: row["status"] for row in s.iterations("t")} == {0: "done", 1: "running"}
        (search,) = s.runs("puzzles like ?", ["%search-train.jsonl"])
        assert search["status"] == "interrupted" and 0 < s.count_results(search["id"])[0] < 6
    monkeypatch.setattr(hit, "torch_backend_factory", factory)
    r = runner.invoke(app, cli_args(start_model, data_dir, tmp_path, 1))
    assert r.exit_code == 0, r.output
    with open_store(tmp_path / "r.db") as s:
        rows = s.iterations("t")
        assert [row["status"] for row in rows] == ["done", "done"]
        assert rows[1]["search_run_id"] == search["id"] and s.count_results(search["id"])[0] == 6
        assert not s.query("select run_id, puzzle_index from results group by 1, 2 having count(*) > 1")


def test_missing_model_or_data_is_one_line_before_the_db_is_made(tmp_path, start_model):
    r = runner.invoke(app, cli_args(tmp_path / "no-model", tmp_path / "no-data", tmp_path, 1))
    assert r.exit_code == 2 and r.stderr.startswith("error: model") and len(r.stderr.splitlines()) == 1
    r = runner.invoke(app, cli_args(start_model, tmp_path / "no-data", tmp_path, 1))
    assert r.exit_code == 2 and "test_new.jsonl not found" in r.stderr and "sbt data generate" in r.stderr
    r = runner.invoke(app, cli_args(start_model, tmp_path, tmp_path, 1, "--restart-from", "nope"))
    assert r.exit_code == 2 and "--restart-from" in r.stderr
    assert not (tmp_path / "r.db").exists()


# --------------------------------------------------------------------------- --workers


def _iterate_rows(tmp_path) -> list:
    """Every search and evaluation run of experiment ``t`` with its rows, timings left out
    (the real untrained model: its round-1 search verifies nothing, the round fails)."""
    with open_store(tmp_path / "r.db") as s:
        out = []
        for run in sorted(s.runs(), key=lambda r: r["id"]):
            identity = {k: run[k] for k in ("method", "params", "seed", "split", "model", "model_sha256", "backend",
                                            "backend_options", "puzzles_sha256", "n_puzzles", "status")}
            rows = [{k: v for k, v in r.items() if k not in ("run_id", "wall_ms", "finished")}
                    for r in s.results(run["id"])]
            out.append((identity, rows))
        iterations = [(r["round"], r["status"], r["fast_acc"], r["slow_acc"]) for r in s.iterations("t")]
    return [out, iterations]


SMALL = ("--eval-limit", "2", "--train-puzzles", "4")  # (the last of a repeated option counts)


def test_workers_write_the_rows_and_paths_of_one(tmp_path, data_dir, start_model):
    """``--workers 2`` (spawned processes open the real model themselves) writes the search
    and evaluation rows and the paths file of ``--workers 1``; ``--workers 0`` is one line."""
    got = {}
    for k in (1, 2):
        where = tmp_path / f"w{k}"
        r = runner.invoke(app, cli_args(start_model, data_dir, where, 1, "--workers", str(k), *SMALL))
        assert r.exit_code == 2 and "no verified search answer" in r.stderr, r.output
        got[k] = (_iterate_rows(where), (where / "out" / "round1" / "paths.jsonl").read_text(),
                  (where / "out" / "round1" / "search-train.jsonl").read_text())
    runs, iterations = got[1][0]
    assert [i[:2] for i in iterations] == [(0, "done"), (1, "failed")]
    assert [(i["method"], i["split"]) for i, _ in runs] == [("greedy", "test_new"), ("self-backtrack", "test_new"),
                                                            ("self-backtrack", None)]
    assert [len(rows) for _, rows in runs] == [2, 2, 4] and all(r["tokens"] for _, rows in runs for r in rows)
    assert got[2] == got[1]

    r = runner.invoke(app, cli_args(start_model, data_dir, tmp_path, 1, "--workers", "0"))
    assert r.exit_code == 2 and len(r.stderr.splitlines()) == 1 and "--workers" in r.stderr, r.output
    assert not (tmp_path / "r.db").exists()
