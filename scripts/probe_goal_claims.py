"""Does a backtracking model recognise a last step that claims the target with wrong arithmetic?

    python scripts/probe_goal_claims.py --model countdown4-backtrack --limit 150

For each of the first --limit `test_new` puzzles, P(`<backtrack>`) as the next token after
three kinds of last step (teacher forcing, torch backend):

- a correct last step of a solver path ("Goal Reached!" is right);
- a wrong claim on the solution path: the path's prefix, then another operation on the
  last two numbers with the target written as its result (the goal-forcing training kind);
- the model's own claim: the first of 8 samples (T=0.7) that ends in "Goal Reached!" after
  a last step whose written result is the target but whose arithmetic is wrong.

Prints the mean P(`<backtrack>`) and how often it beats P(`Goal Reached!`) for each kind.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from sbt_core.backends.torch_backend import TorchBackend  # noqa: E402
from sbt_core.countdown import parse_step, state_after  # noqa: E402
from sbt_core.generate import read_puzzles  # noqa: E402
from sbt_core.models import resolve_model  # noqa: E402
from sbt_core.solver import random_solution  # noqa: E402
from sbt_core.trace import BACKTRACK, GOAL, parse_response, prompt  # noqa: E402
from training.data import goal_forcing_error  # noqa: E402


def next_token_probs(tb: TorchBackend, puzzle, lines: list[str], ids: tuple[int, int]) -> tuple[float, float]:
    tokens = tb._prompt_ids(prompt(puzzle)) + tb.encode("".join(f"{line}\n" for line in lines))
    with torch.inference_mode():
        probs = torch.softmax(tb.model(input_ids=torch.tensor([tokens])).logits[0, -1].float(), -1)
    return float(probs[ids[0]]), float(probs[ids[1]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="countdown4-backtrack")
    ap.add_argument("--split", default=None, help="JSONL puzzles (default: data/countdown4/test_new.jsonl)")
    ap.add_argument("--limit", type=int, default=150)
    args = ap.parse_args()
    tb = TorchBackend(resolve_model(args.model))
    ids = (tb.tokenizer.convert_tokens_to_ids(BACKTRACK), tb.tokenizer.convert_tokens_to_ids(GOAL))
    puzzles = read_puzzles(args.split or ROOT / "data/countdown4/test_new.jsonl", args.limit)
    rng = random.Random(0)
    kinds: dict[str, list[tuple[float, float]]] = {"correct last step": [], "wrong claim on the path": [],
                                                   "the model's own claim": []}
    for i, p in enumerate(puzzles):
        path = random_solution(p, rng)
        if path:
            state = state_after(p, path[:-1])
            prefix = [str(s) for s in path[:-1]]
            kinds["correct last step"].append(next_token_probs(tb, p, prefix + [str(path[-1])], ids))
            fake = goal_forcing_error(state, p.target, rng)
            if fake:
                kinds["wrong claim on the path"].append(next_token_probs(tb, p, prefix + [str(fake)], ids))
        for c in tb.sample([prompt(p)], 8, 0.7, 96, seed=i)[0]:
            r = parse_response(c.text)
            s = parse_step(r.lines[-1]) if r.reached_goal and r.lines else None
            if s and s.result == p.target and not s.is_correct:
                kinds["the model's own claim"].append(next_token_probs(tb, p, r.lines, ids))
                break
    print(f"{args.model}: next token after the last step ({len(puzzles)} puzzles)")
    for name, rows in kinds.items():
        if rows:
            mean = sum(b for b, _ in rows) / len(rows)
            beats = sum(b > g for b, g in rows) / len(rows)
            print(f"  {name:<26} n={len(rows):4d}  mean P(<backtrack>) {mean:.3f}  P(<backtrack>) > P(Goal Reached!) {100 * beats:.0f}%")


if __name__ == "__main__":
    main()
