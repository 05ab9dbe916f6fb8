"""Output fingerprints of the shipped models (issue 21): the same seeds must give the same
samples, answers and counts through every refactor of the decoding code. A change here is
a change of every stored result: only a bug fix may change it, and then the file in
tests/fingerprints/ is regenerated on purpose (``SBT_WRITE_FINGERPRINTS=1``) and the
commit says why."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sbt_core.backends import llama_available, load_backend
from sbt_core.generate import read_puzzles
from sbt_core.search import method_params, run_search

REPO = Path(__file__).resolve().parents[1]
FINGERPRINTS = Path(__file__).resolve().parent / "fingerprints"
# (method, params): each decoding path once, small budgets
CASES = [("greedy", {}), ("self-backtrack", {"n": 8, "b": 1, "temperature": 1.0}),
         ("best-of-n", {"n": 4, "temperature": 0.7}), ("beam", {"width": 2}), ("dfs", {"n": 2, "nodes": 6}),
         ("pass@n", {"n": 4, "temperature": 0.7, "top_k": 5})]
PUZZLES = 8


def fingerprint(backend_name: str) -> list[dict]:
    backend = load_backend("countdown4-backtrack", backend_name, 4)
    puzzles = read_puzzles(REPO / "data" / "countdown4" / "test_new.jsonl", PUZZLES)
    rows = []
    for method, given in CASES:
        params = method_params(method, given)
        for i, p in enumerate(puzzles):
            r = run_search(method, p, backend, params, seed=1000 + i)
            rows.append({"method": method, "puzzle": str(p), "solved": r.solved, "steps": [str(s) for s in r.lines],
                         "tokens": r.stats.tokens, "backtracks": r.stats.backtracks,
                         "candidates": r.stats.candidates, "model_calls": r.stats.model_calls,
                         "score": None if r.score is None else round(r.score, 3)})
    return rows


@pytest.mark.parametrize("backend_name", ["torch", "llama"])
def test_shipped_model_outputs_are_unchanged(backend_name):
    if backend_name == "llama" and not llama_available():
        pytest.skip("llama backend not installed")
    file = FINGERPRINTS / f"countdown4-backtrack-{backend_name}.json"
    rows = fingerprint(backend_name)
    if os.environ.get("SBT_WRITE_FINGERPRINTS"):
        file.write_text(json.dumps(rows, indent=0) + "\n")
    expected = json.loads(file.read_text())
    for got, want in zip(rows, expected, strict=True):
        assert got == want, (got, want)
