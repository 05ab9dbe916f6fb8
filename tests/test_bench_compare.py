"""``sbt bench compare RUN_A RUN_B`` (issue 23 item 6): accuracy on the shared puzzles, the
paired difference with a 95% interval and the exact McNemar p-value."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from harness.compare import compare, mcnemar_exact, paired_interval
from harness.store import open_store
from sbt_cli.app import app
from sbt_core.errors import SbtError
from sbt_core.search import METHODS

runner = CliRunner()


def add_run(store, method, over, model, solved: list[int], offset: int = 0):
    params = {**METHODS[method].defaults, **over}
    run, _ = store.get_or_create_run({"method": method, "params": params, "model": model, "model_sha256": model,
                                      "backend": "torch", "split": "test_new", "puzzles": "t.jsonl",
                                      "puzzles_sha256": "t", "seed": 0, "n_puzzles": len(solved)})
    for j, ok in enumerate(solved):
        store.add_result(run["id"], {"puzzle_index": j, "numbers": [1, 2, j + offset], "target": 10, "solved": ok,
                                     "failure": None if ok else "target_not_reached", "steps": []})
    store.set_status(run["id"], "done")
    return run["id"]


def test_mcnemar_exact_known_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 2 ** 12)  # 0.0386
    assert mcnemar_exact(2, 10) == mcnemar_exact(10, 2)
    assert mcnemar_exact(5, 5) == 1.0  # capped at 1
    assert mcnemar_exact(1000, 0) == pytest.approx(2.0 ** -999)  # exact: no 0 from a float sum of tiny terms


def test_paired_interval_contains_the_difference():
    lo, hi = paired_interval(30, 10, 100)
    assert lo < 0.2 < hi and hi - lo == pytest.approx(2 * 1.96 * math.sqrt(40 - 400 / 100) / 100, rel=1e-3)


def test_compare_pairs_shared_puzzles_only(tmp_path):
    store = open_store(tmp_path / "r.db")
    # A solves 0..7 of 10, B solves 4..9 of puzzles 2..11 (offset 2): shared puzzles 2..9
    a = add_run(store, "self-backtrack", {"n": 8, "b": 1}, "m-bt", [1] * 8 + [0] * 2)
    b = add_run(store, "greedy", {}, "m-sft", [0, 0, 1, 1, 1, 1, 1, 1, 1, 1], offset=2)
    c = compare(store, str(a), str(b))
    # shared third numbers 2..9: A solved 2..7 (6 of 8); B's puzzle j+2 solved for j>=2: 4..9 (6 of 8)
    assert c.n == 8 and c.a == 6 / 8 and c.b == 6 / 8 and c.diff == 0
    assert (c.both, c.only_a, c.only_b, c.neither) == (4, 2, 2, 0) and c.p_value == 1.0
    assert compare(store, "self-backtrack n=8 b=1", "greedy@m-sft").run_b["id"] == b
    store.close()


def test_cli_json_contract_and_bad_names(tmp_path):
    db = tmp_path / "r.db"
    store = open_store(db)
    a = add_run(store, "self-backtrack", {"n": 8, "b": 1}, "m-bt", [1] * 12 + [0] * 8)
    b = add_run(store, "greedy", {}, "m-sft", [1] * 2 + [0] * 18)
    add_run(store, "greedy", {}, "other", [0] * 20)
    store.close()
    res = runner.invoke(app, ["bench", "compare", str(a), str(b), "--db", str(db), "--format", "json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert {"n", "a", "b", "diff", "p_value"} <= set(out)
    assert out["n"] == 20 and out["a"] == 0.6 and out["b"] == 0.1 and out["diff"] == pytest.approx(0.5)
    assert out["p_value"] == pytest.approx(mcnemar_exact(10, 0))
    table = runner.invoke(app, ["bench", "compare", str(a), str(b), "--db", str(db)])
    assert table.exit_code == 0 and "McNemar" in table.stdout and "+50.0 points" in table.stdout
    for args, fragment in ((["greedy", str(a)], "names 2 runs"), (["999", str(a)], "no run #999"),
                           (["bogus", str(a)], "no run labelled"), ([str(a), str(b), "--format", "csv"], "--format")):
        res = runner.invoke(app, ["bench", "compare", *args, "--db", str(db)])
        lines = res.stderr.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1 and fragment in lines[0], res.stderr
    with pytest.raises(SbtError):
        compare(open_store(db), "greedy", str(a))
