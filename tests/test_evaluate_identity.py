import json
from harness.runner import evaluate
from harness.store import open_store
from sbt_core.backends.scripted import ScriptedBackend, solver_continuation
from sbt_core.search import method_params


def test_evaluate_stores_the_params_a_bench_stores(tmp_path):
    """sbt iterate's runs (harness.runner.evaluate) have the identity `sbt bench` gives the same
    run: the recorded params of method_params, not the settings class's full defaults."""
    puzzles = tmp_path / "p.jsonl"
    puzzles.write_text('{"numbers": [3, 4, 5, 7], "target": 41}\n')
    store = open_store(tmp_path / "r.db")
    backend = ScriptedBackend(default=solver_continuation)
    backend.model_name = "m"
    evaluate(store, "self-backtrack", model="m", params={"n": 2, "b": 1, "temperature": 0.7}, backend_obj=backend,
             puzzles_file=puzzles, n_numbers=4)
    (run,) = store.runs()
    assert json.loads(run["params"]) == method_params("self-backtrack", {"n": 2, "b": 1, "temperature": 0.7})
