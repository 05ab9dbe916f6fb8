"""Greedy accuracy of trained models with the strict verifier, side by side, plus how
well <backtrack> works as a learned verifier (issue: training accuracy targets).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_accuracy.py \
        --models countdown3-sft,countdown3-backtrack --split data/countdown3/test_new.jsonl --limit 1000
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

from rich.console import Console
from rich.table import Table

from sbt_core.countdown import verify
from sbt_core.generate import read_puzzles
from sbt_core.models import model_sha256, resolve_model
from sbt_core.trace import parse_response
from training.evaluate import greedy_texts
from training.verifier_stats import VerifierStats


def evaluate(model_name: str, puzzles) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(model_name)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    t0 = time.perf_counter()
    texts = greedy_texts(model, tok, puzzles)
    wall = time.perf_counter() - t0
    solved, failures, stats = 0, Counter(), VerifierStats()
    for puzzle, text in zip(puzzles, texts):
        resp = parse_response(text)
        verdict = verify(puzzle, resp.steps)
        solved += verdict.ok
        if not verdict.ok:
            failures["ended in <backtrack>" if resp.backtracked else str(verdict.failure)] += 1
        stats.add(puzzle, resp)
    return {"model": model_name, "sha256": model_sha256(path)[:12], "n": len(puzzles), "greedy": solved / len(puzzles),
            "wall_s": wall, "failures": dict(failures), **{f"bt_{k}": v for k, v in stats.to_json().items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True, help="comma-separated model names or dirs")
    ap.add_argument("--split", required=True, help="a JSONL split, e.g. data/countdown3/test_new.jsonl")
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    puzzles = read_puzzles(args.split, args.limit)
    rows = [evaluate(m, puzzles) for m in args.models.split(",")]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"
    table = Table(title=f"greedy, strict verifier, {len(puzzles)} puzzles of {args.split}")
    for col in ("model", "greedy acc", "ends in <backtrack>", "backtrack precision", "backtrack recall", "top failures"):
        table.add_column(col)
    for r in rows:
        top = ", ".join(f"{k} {v}" for k, v in Counter(r["failures"]).most_common(3))
        table.add_row(f"{r['model']} ({r['sha256']})", pct(r["greedy"]), pct(r["bt_ended_backtrack"]),
                      pct(r["bt_precision"]), pct(r["bt_recall"]), top)
    Console().print(table)


if __name__ == "__main__":
    main()
