"""The leaderboard: Wilson intervals, aggregates, curves, rendering and exports."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
import sys

import pytest
from rich.console import Console

from harness import paper
from harness.report import build_report, export, scaling_curves, wilson
from sbt_cli.views import render, save_plots
from harness.store import open_store
from sbt_core.search import METHODS

# (method, overrides, split, solved out of 10, tokens, wall_ms, backtracks)
RUNS = [
    ("best-of-n", {"n": 8}, "test_new", 4, 100, 200.0, 0),
    ("best-of-n", {"n": 16}, "test_new", 5, 200, 400.0, 0),
    ("best-of-n", {"n": 32}, "test_new", 3, 400, 800.0, 0),
    ("self-backtrack", {"n": 8, "b": 0}, "test_new", 6, 150, 300.0, 1),
    ("self-backtrack", {"n": 8, "b": 1}, "test_new", 7, 300, 600.0, 2),
    ("self-backtrack", {"n": 16, "b": 1}, "test_new", 8, 600, 1200.0, 3),
    ("greedy", {}, "test_new", 2, 20, 50.0, 0),
    ("exact", {}, "test_new", 10, 0, 1.0, 0),
    ("greedy", {}, "test_seen", 1, 20, 50.0, 0),
]


def fill(store):
    for i, (method, over, split, solved, tokens, wall, bt) in enumerate(RUNS):
        params = {**METHODS[method].defaults, **over}
        model = None if method == "exact" else "tiny"
        run, _ = store.get_or_create_run({"method": method, "params": params, "model": model,
                                          "model_sha256": model and "ab" * 32, "backend": model and "torch",
                                          "split": split, "puzzles": f"data/countdown4/{split}.jsonl",
                                          "puzzles_sha256": split, "seed": 0, "n_puzzles": 10})
        for j in range(10):
            ok = j < solved
            fail = None if ok else ("target_not_reached" if j % 2 else "incorrect_result")
            store.add_result(run["id"], {"puzzle_index": j, "numbers": [1, 2, 3, 4], "target": 10, "solved": ok,
                                         "failure": fail, "steps": [], "tokens": tokens, "wall_ms": wall,
                                         "backtracks": bt, "model_calls": 1})
        store.set_status(run["id"], "done")
    empty, _ = store.get_or_create_run({"method": "greedy", "params": {}, "puzzles_sha256": "z", "seed": 9})
    store.record_iteration("exp", 0, model="tiny", fast_acc=0.2, slow_acc=0.7, n_train_paths=0)
    store.record_iteration("exp", 1, model="tiny-r1", fast_acc=0.45, slow_acc=0.75, n_train_paths=812)
    return store


@pytest.fixture
def store():
    return fill(open_store(":memory:"))


def test_wilson_known_values():
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.236593, abs=1e-6) and hi == pytest.approx(0.763407, abs=1e-6)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.277533, abs=1e-6)
    lo, hi = wilson(10, 10)
    assert lo == pytest.approx(0.722467, abs=1e-6) and hi == 1.0
    lo, hi = wilson(730, 1000)
    z = 1.959963984540054  # the closed form (k + z²/2 ± z·sqrt(k(n-k)/n + z²/4)) / (n + z²)
    root = z * (730 * 270 / 1000 + z * z / 4) ** 0.5
    assert lo == pytest.approx((730 + z * z / 2 - root) / (1000 + z * z), abs=1e-12)
    assert hi == pytest.approx((730 + z * z / 2 + root) / (1000 + z * z), abs=1e-12)
    assert (round(lo, 4), round(hi, 4)) == (0.7016, 0.7566)


def test_leaderboard_aggregates(store):
    rep = build_report(store)
    assert len(rep.rows) == len(RUNS)  # the run without results is left out
    by = {(r.label, r.split): r for r in rep.rows}
    bon8 = by[("best-of-n n=8", "test_new")]
    assert (bon8.n, bon8.solved, bon8.accuracy) == (10, 4, 0.4)
    assert (bon8.ci_low, bon8.ci_high) == wilson(4, 10)
    assert bon8.tokens_per_puzzle == 100 and bon8.seconds_per_puzzle == pytest.approx(0.2)
    assert bon8.failures == {"target_not_reached": 3, "incorrect_result": 3}
    assert bon8.model == "tiny" and bon8.status == "done" and not bon8.oracle
    assert by[("exact", "test_new")].oracle and by[("exact", "test_new")].failures == {}
    assert by[("self-backtrack n=16 b=1", "test_new")].backtracks_per_puzzle == 3
    assert [r.split for r in rep.rows] == sorted(r.split for r in rep.rows)
    only = build_report(store, split="test_seen", methods=["greedy"])
    assert [(r.label, r.accuracy) for r in only.rows] == [("greedy", 0.1)]
    assert build_report(store, model="nope").rows == []


def test_retrained_model_name_keeps_its_checkpoints_apart(store, monkeypatch):
    params = {**METHODS["greedy"].defaults}
    run, _ = store.get_or_create_run({"method": "greedy", "params": params, "model": "tiny", "model_sha256": "cd" * 32,
                                      "backend": "torch", "split": "test_new", "puzzles": "data/countdown4/test_new.jsonl",
                                      "puzzles_sha256": "test_new", "seed": 0, "n_puzzles": 10})
    store.add_result(run["id"], {"puzzle_index": 0, "numbers": [1, 2, 3, 4], "target": 10, "solved": True,
                                 "failure": None, "steps": [], "tokens": 5, "wall_ms": 1.0, "backtracks": 0,
                                 "model_calls": 1})
    from harness.report import leaderboard

    models = {r.model for r in leaderboard(store) if r.model}
    assert models == {"tiny@abababab", "tiny@cdcdcdcd"}
    assert {r.model for r in leaderboard(store, model="tiny")} == {"tiny@abababab", "tiny@cdcdcdcd"}
    # the weights shipped in models/ under that name keep the plain name
    monkeypatch.setattr("harness.report._shipped_sha", lambda name: "cd" * 32)
    assert {r.model for r in leaderboard(store) if r.model} == {"tiny@abababab", "tiny"}


def test_scaling_curves(store):
    curves = {(c.axis, c.name, c.split): c for c in scaling_curves(build_report(store).rows)}
    assert set(curves) == {("n", "best-of-n", "test_new"), ("n", "self-backtrack b=1", "test_new"),
                           ("b", "self-backtrack n=8", "test_new")}
    bon = curves[("n", "best-of-n", "test_new")]
    assert [(p["x"], p["accuracy"]) for p in bon.points] == [(8, 0.4), (16, 0.5), (32, 0.3)]
    assert [(p["x"], p["accuracy"]) for p in curves[("b", "self-backtrack n=8", "test_new")].points] == [(0, 0.6), (1, 0.7)]


def test_scaling_curves_are_of_the_shipped_weights_unless_all_weights(store, monkeypatch):
    for n, solved in ((8, 9), (16, 10)):  # the same name retrained: new weights, a better curve
        params = {**METHODS["best-of-n"].defaults, "n": n}
        run, _ = store.get_or_create_run({"method": "best-of-n", "params": params, "model": "tiny",
                                          "model_sha256": "cd" * 32, "backend": "torch", "split": "test_new",
                                          "puzzles": "data/countdown4/test_new.jsonl", "puzzles_sha256": "test_new",
                                          "seed": 0, "n_puzzles": 10})
        for j in range(10):
            store.add_result(run["id"], {"puzzle_index": j, "numbers": [1, 2, 3, 4], "target": 10, "solved": j < solved,
                                         "failure": None if j < solved else "target_not_reached", "steps": [],
                                         "tokens": 5, "wall_ms": 1.0, "backtracks": 0, "model_calls": 1})
    monkeypatch.setattr("harness.report._shipped_sha", lambda name: "cd" * 32)  # the new weights are shipped
    rep = build_report(store)
    assert {r.model for r in rep.rows if r.superseded} == {"tiny@abababab"}  # the leaderboard keeps every run
    assert [(c.name, c.model, [p["accuracy"] for p in c.points]) for c in rep.curves] == [("best-of-n", "tiny", [0.9, 1.0])]
    every = {(c.axis, c.name, c.model) for c in build_report(store, all_weights=True).curves}
    assert every == {("n", "best-of-n", "tiny"), ("n", "best-of-n", "tiny@abababab"),
                     ("n", "self-backtrack b=1", "tiny@abababab"), ("b", "self-backtrack n=8", "tiny@abababab")}


def test_render_rich(store):
    console = Console(record=True, width=220, force_terminal=False, color_system=None)
    render(build_report(store), console)
    text = console.export_text()
    for needle in ("Leaderboard", "best-of-n n=8", "40.0", "16.8–68.7", "self-backtrack n=16 b=1", "exact †",
                   "Failure categories", "not reached", "accuracy (%) vs N", "accuracy (%) vs b", "● best-of-n",
                   "▲ self-backtrack b=1",
                   "Expert iteration", "tiny-r1", "Paper reference", "NOT our models", "73.54", "arXiv 2502.04404"):
        assert needle in text, needle
    # the paper's numbers are a separate block after ours, never inside the leaderboard
    assert text.index("Paper reference") > text.index("Leaderboard")
    assert "73.54" not in text[: text.index("Paper reference")]


def test_exports_parse_back(store):
    rep = build_report(store)
    data = json.loads(export(rep, "json"))
    assert [r["run_id"] for r in data["leaderboard"]] == [r.run_id for r in rep.rows]
    first = data["leaderboard"][0]
    assert first == json.loads(json.dumps(rep.rows[0].to_dict()))
    assert len(data["paper"]["rows"]) == len(paper.TABLE) and data["paper"]["source"] == paper.SOURCE
    assert [len(c["points"]) for c in data["curves"]] == [2, 3, 2]
    assert [i["round"] for i in data["iterations"]] == [0, 1]

    rows = list(csv.DictReader(io.StringIO(export(rep, "csv"))))
    assert len(rows) == len(rep.rows)
    for got, row in zip(rows, rep.rows):
        assert int(got["run_id"]) == row.run_id and float(got["accuracy"]) == pytest.approx(row.accuracy)
        assert json.loads(got["params"]) == row.params
        assert int(got["failure_target_not_reached"]) == row.failures.get("target_not_reached", 0)

    md = export(rep, "markdown")
    lines = md.splitlines()
    head = lines.index("| method | model | split | puzzles | acc % | 95% CI | tokens/puzzle | s/puzzle | backtracks/puzzle | status |")
    body = []
    for line in lines[head + 2:]:
        if not line.startswith("|"):
            break
        body.append([c.strip() for c in line.strip("|").split("|")])
    assert len(body) == len(rep.rows)
    assert ["best-of-n n=8", "tiny", "test_new", "10", "40.0"] == body[[r.label for r in rep.rows].index("best-of-n n=8")][:5]
    assert "### Paper reference (reported, not our models)" in md and "| Best-of-N, N=32 | 25.60 |" in md
    assert json.loads(export(rep, "json", with_paper=False)).get("paper") is None


def test_save_plots(tmp_path, store):
    curves = build_report(store).curves
    png, svg = tmp_path / "s.png", tmp_path / "plots" / "s.svg"
    assert save_plots(curves, [png, svg]) == [png, svg]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "<svg" in svg.read_text()[:500]
    assert save_plots([], [tmp_path / "none.png"]) == []


def test_compute_plot_puts_every_run_at_its_generated_tokens(tmp_path, store):
    from harness.report import compute_series
    from sbt_cli.views import save_compute_plot

    rows = build_report(store).rows
    series = compute_series(rows)
    assert all(r.tokens_per_puzzle for runs in series.values() for r in runs)  # exact: no tokens, left out
    assert not any(r.method == "exact" for runs in series.values() for r in runs)
    for runs in series.values():  # N / b / width move along a series; everything else splits it
        assert len({(r.split, r.model, r.method) for r in runs}) == 1
        assert [r.tokens_per_puzzle for r in runs] == sorted(r.tokens_per_puzzle for r in runs)
    assert sum(len(v) for v in series.values()) == sum(1 for r in rows if r.n and r.tokens_per_puzzle)
    png = tmp_path / "c.png"
    assert save_compute_plot(rows, [png]) == [png] and png.read_bytes()[:4] == b"\x89PNG"
    assert save_compute_plot([], [tmp_path / "none.png"]) == [] and not (tmp_path / "none.png").exists()


def test_cli_report(tmp_path, monkeypatch, capsys):
    from sbt_cli.app import main

    db = tmp_path / "r.db"
    fill(open_store(db)).close()

    def sbt(*args):
        monkeypatch.setattr(sys, "argv", ["sbt", *map(str, args)])
        with pytest.raises(SystemExit) as exc:
            main()
        return exc.value.code, capsys.readouterr()

    code, out = sbt("bench", "report", "--db", db, "--out", tmp_path / "r.csv")
    assert code == 0 and len(list(csv.DictReader(open(tmp_path / "r.csv")))) == len(RUNS)
    code, out = sbt("bench", "report", "--db", db, "--format", "json", "--split", "test_seen")
    assert code == 0 and [r["label"] for r in json.loads(out.out)["leaderboard"]] == ["greedy"]
    code, out = sbt("bench", "report", "--db", db, "--out", tmp_path / "r.md", "--plot", tmp_path / "c.svg", "--no-paper")
    assert code == 0 and "Paper reference" not in (tmp_path / "r.md").read_text() and (tmp_path / "c.svg").exists()
    code, out = sbt("bench", "report", "--db", db, "--no-curves", "--width", "60")
    assert code == 0 and "best-of-n n=16" in out.out
    code, out = sbt("bench", "runs", "--db", db)
    assert code == 0 and "self-backtrack n=16 b=1" in out.out and "10/10" in out.out
    code, out = sbt("bench", "report", "--db", db, "--format", "xml")
    assert code == 2 and "unknown --format" in out.err
    code, out = sbt("bench", "report", "--db", tmp_path / "missing.db")
    assert code == 2 and "no results database" in out.err


def test_shipped_sha_of_a_model_and_of_its_gguf_label(tmp_path, monkeypatch):
    import hashlib

    from harness.report import _shipped_sha
    from sbt_core.models import model_sha256

    d = tmp_path / "m4"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"weights")
    (d / "model-q8_0.gguf").write_bytes(b"GGUF q8")
    monkeypatch.setenv("SBT_MODELS_DIR", str(tmp_path))
    assert _shipped_sha("m4") == model_sha256(d)
    # a llama.cpp run is labelled NAME:QUANT and hashed over its GGUF file
    assert _shipped_sha("m4:q8_0") == hashlib.sha256(b"GGUF q8").hexdigest() != _shipped_sha("m4")
    assert _shipped_sha("m4:q4_0") is None and _shipped_sha("nope") is None


def test_paper_table_is_the_whole_of_table_1_quoted_exactly():
    from harness import paper

    assert len(paper.TABLE) == len(paper.MODEL_KIND) == 13
    assert len({label for label, *_ in paper.TABLE}) == 13
    new_1b = {label: values[1] for label, _, _, values in paper.TABLE}
    head = paper.HEADLINE
    assert (new_1b["SFT on optimal paths, greedy"], new_1b["self-backtracking b=1, N=32"]) == (head["from"], head["to"])
    assert round(head["to"] - head["from"], 2) == head["points"] and round(head["to"] / head["from"], 2) == head["ratio"]
    shared = Path(__file__).resolve().parents[2] / "shared" / "PAPER.md"  # the brief's copy, where present
    if shared.is_file():
        quoted = {}
        for line in shared.read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 5 and all(c.replace(".", "").isdigit() for c in cells[1:]):
                quoted[cells[0]] = [float(c) for c in cells[1:]]
        assert sorted(quoted.values()) == sorted(values for *_, values in paper.TABLE)


def test_report_shows_each_models_training_compute_every_stage(tmp_path, monkeypatch, store):
    """A fine-tuned model's training.json carries its base's cost too (training/finetune.py):
    the report shows the total next to the leaderboard, in every format."""
    d = tmp_path / "tiny"
    d.mkdir()
    (d / "training.json").write_text(json.dumps({
        "tokens": 5_000, "wall_s": 60.0, "hardware": "CPU test, 1 threads", "config": {"data": "op"},
        "objective": {"name": "grpo"}, "base_model": {"path": "/x/models/tiny-sft"},
        "compute": {"total": {"tokens": 1_005_000, "generated_tokens": 40_000, "wall_s": 7260.0}}}))
    monkeypatch.setenv("SBT_MODELS_DIR", str(tmp_path))
    report = build_report(store)
    (c,) = report.compute
    assert (c.model, c.objective, c.base, c.tokens, c.generated_tokens, c.wall_s) == \
        ("tiny", "grpo", "tiny-sft", 1_005_000, 40_000, 7260.0)
    md = export(report, "markdown")
    assert "Training compute" in md and "| tiny | grpo | tiny-sft | 1,005,000 | 40,000 | 2.02 h |" in md
    assert json.loads(export(report, "json"))["training_compute"][0]["tokens"] == 1_005_000
    console = Console(record=True, width=200)
    render(report, console, with_paper=False, with_curves=False)
    assert "1,005,000" in console.export_text()
    (d / "training.json").write_text("{not json")  # an unreadable record: the model is left out
    assert build_report(store).compute == []


def test_training_cost_is_read_from_a_model_dir_and_stored_with_its_runs(tmp_path, monkeypatch):
    from sbt_core.models import training_cost

    sft = tmp_path / "a-sft"
    sft.mkdir()
    (sft / "training.json").write_text(json.dumps({"tokens": 100, "wall_s": 10.0, "hardware": "h",
                                                   "config": {"data": "op+back"}}))
    assert training_cost(sft) == {"objective": "sft op+back", "base": None, "tokens": 100, "generated_tokens": 0,
                                  "wall_s": 10.0, "hardware": "h"}
    assert training_cost(tmp_path / "none") is None
    # a run stores it (runs.training); the report takes it from there, not from models/
    store = open_store(":memory:")
    run, _ = store.get_or_create_run({"method": "greedy", "params": {}, "model": "far-away", "model_sha256": "cd" * 32,
                                      "backend": "torch", "split": "test_new", "puzzles_sha256": "p", "seed": 0,
                                      "training": json.dumps(training_cost(sft))})
    store.add_result(run["id"], {"puzzle_index": 0, "numbers": [1, 2], "target": 3, "solved": True, "tokens": 5})
    monkeypatch.setenv("SBT_MODELS_DIR", str(tmp_path / "empty"))
    (c,) = build_report(store).compute
    assert (c.model, c.objective, c.tokens, c.wall_s) == ("far-away", "sft op+back", 100, 10.0)
