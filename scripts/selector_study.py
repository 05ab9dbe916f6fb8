"""The two premises of self-backtracking, measured on a model's own searches.

1. The selector: Algorithm 1 picks the candidate with the highest negative perplexity (mean
   token log-prob). For every distinct candidate of every puzzle: its score and whether our
   strict verifier accepts it. Reported: the rank correlation of score and correctness
   (Spearman over all candidates), the within-puzzle AUROC (how often a verified candidate
   outscores a failing one of the same puzzle), a reliability table (share verified per
   score decile), and the oracle-selection gap: puzzles where some candidate verifies minus
   puzzles where the selected one does.
2. ``<backtrack>``: for every sample, its full response (the state's prefix + the sample's
   steps) is replayed by ``solver.first_wrong_step`` (a broken rule, wrong arithmetic, or a
   correct step into a state that can no longer reach the target). Precision: of the samples
   ending in ``<backtrack>``, the share whose last step is wrong (exact: it is the first
   wrong one); recall: of the samples that made a wrong step themselves, the share that
   flagged it at once; false alarms: ``<backtrack>`` after steps that are all right.

Each puzzle runs with the seed ``sbt bench`` gives it (``harness.runner.derive_seed``), so
the selected answers are those of the matching bench run. Example (about 3 minutes on one
core with llama.cpp):

    python scripts/selector_study.py --model countdown4-backtrack --backend llama --n 32 --b 1 \
        --temperature 0.7 --limit 1000 --json docs/figures/selector_c4.json --plot docs/figures/selector_c4.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.runner import derive_seed, infer_numbers, load_source  # noqa: E402
from sbt_core.countdown import verify  # noqa: E402
from sbt_core.engine import Engine, solve  # noqa: E402
from sbt_core.files import write_atomic, write_json  # noqa: E402
from sbt_core.search.events import Candidate, Expand, Sample  # noqa: E402
from sbt_core.settings import backend_options  # noqa: E402
from sbt_core.solver import first_wrong_step  # noqa: E402


def study_puzzle(puzzle, events) -> tuple[list[tuple[float, bool]], dict]:
    """(score, verified) per distinct candidate of one search, and its backtrack counts."""
    cands: dict[tuple, float] = {}
    prefixes: dict[int, list[str]] = {}
    bt = dict(flagged=0, flagged_wrong=0, flagged_first_wrong=0, flagged_right=0,
              made_wrong=0, caught=0, all_right=0, all_right_backtracked=0)
    for ev in events:
        if isinstance(ev, Expand):
            prefixes[ev.node] = list(ev.prefix)
        elif isinstance(ev, Candidate):
            cands[tuple(ev.lines)] = ev.score  # the last event of an answer holds its merged score
        elif isinstance(ev, Sample):
            prefix = prefixes.get(ev.node, [])
            full = prefix + list(ev.lines)
            wrong = first_wrong_step(puzzle, full)
            backtracked = ev.ending == "backtrack" and bool(full)
            if backtracked:
                bt["flagged"] += 1
                if wrong is None:
                    bt["flagged_right"] += 1
                else:
                    bt["flagged_wrong"] += 1
                    bt["flagged_first_wrong"] += wrong == len(full) - 1
            if wrong is not None and wrong >= len(prefix):  # the sample itself made the wrong step
                bt["made_wrong"] += 1
                bt["caught"] += backtracked and wrong == len(full) - 1
            if wrong is None and ev.ending in ("backtrack", "goal") and ev.lines:
                bt["all_right"] += 1
                bt["all_right_backtracked"] += ev.ending == "backtrack"
    scored = [(score, bool(verify(puzzle, list(lines)))) for lines, score in cands.items()]
    return scored, bt


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic) if len(set(y.tolist())) > 1 else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="countdown4-backtrack")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--split", default="test_new")
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--b", type=int, default=1)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--variant", default="all-states")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args(argv)

    source = load_source(args.split, None, None, infer_numbers(args.model))
    puzzles = source.puzzles[: args.limit]
    engine = Engine(args.model, args.backend, len(puzzles[0].numbers), backend_options(args.backend))
    params = engine.params("self-backtrack", {"n": args.n, "b": args.b, "temperature": args.temperature,
                                              "variant": args.variant})
    scores, labels, auroc_pairs, bt_total = [], [], [0.0, 0], {}
    any_ok = selected_ok = 0
    for i, puzzle in enumerate(puzzles):
        result, events = solve(engine, "self-backtrack", puzzle, params, derive_seed(args.seed, i), keep_events=True)
        scored, bt = study_puzzle(puzzle, events)
        any_ok += any(ok for _, ok in scored)
        selected_ok += result.solved
        for k, v in bt.items():
            bt_total[k] = bt_total.get(k, 0) + v
        for s, ok in scored:
            scores.append(s)
            labels.append(ok)
        good = [s for s, ok in scored if ok]
        bad = [s for s, ok in scored if not ok]
        for g in good:
            for b_ in bad:
                auroc_pairs[0] += 1.0 if g > b_ else 0.5 if g == b_ else 0.0
                auroc_pairs[1] += 1
        if (i + 1) % 100 == 0:
            print(f"{i + 1}/{len(puzzles)} puzzles, selected {selected_ok}, any candidate {any_ok}", file=sys.stderr)
    x, y = np.array(scores), np.array(labels, dtype=float)
    order = np.argsort(x)
    deciles = []
    for part in np.array_split(order, 10):
        if len(part):
            deciles.append({"score_from": float(x[part].min()), "score_to": float(x[part].max()),
                            "candidates": int(len(part)), "verified": float(y[part].mean())})
    n = len(puzzles)
    bt = bt_total
    out = {
        "command": "python scripts/selector_study.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": args.model, "model_sha256": getattr(engine.backend, "model_sha256", None), "backend": args.backend,
        "split": args.split, "puzzles": n, "seed": args.seed, "params": params,
        "selected_accuracy": selected_ok / n, "oracle_among_candidates": any_ok / n,
        "oracle_selection_gap": (any_ok - selected_ok) / n,
        "candidates": len(scores), "verified_candidates": int(y.sum()),
        "spearman_score_vs_verified": spearman(x, y),
        "within_puzzle_auroc": auroc_pairs[0] / auroc_pairs[1] if auroc_pairs[1] else None,
        "within_puzzle_pairs": auroc_pairs[1],
        "reliability_deciles": deciles,
        "backtrack": {**bt,
                      "precision_last_step_wrong": bt["flagged_wrong"] / bt["flagged"] if bt["flagged"] else None,
                      "precision_exact_first_wrong": bt["flagged_first_wrong"] / bt["flagged"] if bt["flagged"] else None,
                      "recall_own_wrong_steps": bt["caught"] / bt["made_wrong"] if bt["made_wrong"] else None,
                      "false_alarm_rate_all_right": (bt["all_right_backtracked"] / bt["all_right"]
                                                     if bt["all_right"] else None)},
    }
    write_json(args.json, out, what="--json")
    print(json.dumps({k: v for k, v in out.items() if k != "reliability_deciles"}, indent=1))
    if args.plot:
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4.5))
        mids = [(d["score_from"] + d["score_to"]) / 2 for d in deciles]
        ax.plot(mids, [100 * d["verified"] for d in deciles], marker="o")
        ax.set_xlabel("candidate score (mean token log-prob), decile midpoints")
        ax.set_ylabel("% of candidates that verify")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.set_title(f"{args.model} {args.split}: reliability of the selector\n"
                     f"n={args.n} b={args.b} T={args.temperature} {args.variant}, {n} puzzles", fontsize=9)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format=args.plot.suffix.lstrip(".") or "png", dpi=130)
        plt.close(fig)
        write_atomic(args.plot, buf.getvalue(), what="--plot")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
