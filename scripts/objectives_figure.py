"""Issue 25's figure: accuracy against training compute for every objective (left), and
against inference tokens per puzzle for every model and method (right), on one split.

    python scripts/objectives_figure.py [--split test_new] [--db results.db] [--out docs/figures/objectives.png]

Reads the runs of scripts/objectives.sh from results.db (their models' training cost is
stored with each run, ``runs.training``); one point per run, 95% Wilson bars. The x axis of
the left panel is the whole training time of each model (every stage, the base's included)
on the machine it was trained on (training.json says which).
"""

from __future__ import annotations

import argparse
from pathlib import Path

MODELS = ["countdown4-sft", "c4-sft-dpo", "c4-sft-kto", "c4-sft-grpo", "countdown4-backtrack", "c4-backtrack-grpo"]
SHOWN = {"greedy": "greedy", "best-of-n": "best-of-n", "self-backtrack": "self-backtracking b=1"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", default="test_new")
    ap.add_argument("--db", default="results.db")
    ap.add_argument("--out", default="docs/figures/objectives.png")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.report import leaderboard, model_compute
    from harness.store import read_only

    rows = read_only(Path(args.db), lambda store: leaderboard(store, split=args.split))
    rows = [r for r in rows if r.model and r.model.partition(":")[0] in MODELS and r.method in SHOWN
            and r.params.get("temperature", 0.7) == 0.7 and r.params.get("b", 1) == 1 and r.n >= 1000]
    cost = {c.model.partition(":")[0]: c for c in model_compute(rows)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 6))
    colours = dict(zip(MODELS, plt.cm.tab10.colors))
    for r in rows:
        name = r.model.partition(":")[0]
        c = cost.get(name)
        n = r.params.get("n")
        if c is not None and c.wall_s and (r.method == "greedy" or n == 32):
            marker = {"greedy": "o", "best-of-n": "s", "self-backtrack": "^"}[r.method]
            left.errorbar(c.wall_s / 3600, 100 * r.accuracy, yerr=[[100 * (r.accuracy - r.ci_low)],
                                                                   [100 * (r.ci_high - r.accuracy)]],
                          marker=marker, color=colours[name], capsize=2, linestyle="none")
            left.annotate(f"{name} {SHOWN[r.method]}" + (f" N={n}" if n else ""), (c.wall_s / 3600, 100 * r.accuracy),
                          textcoords="offset points", xytext=(4, 2), fontsize=6, color=colours[name])
    left.set_xlabel("training time, every stage (hours, 1 CPU thread)")
    left.set_ylabel(f"accuracy on {args.split} (%), 95% Wilson interval")
    left.set_title("accuracy against training compute (o greedy, ■ best-of-32, ▲ self-backtracking N=32)",
                   fontsize=8)
    left.grid(alpha=0.3)
    series: dict[tuple[str, str], list] = {}
    for r in rows:
        series.setdefault((r.model.partition(":")[0], r.method), []).append(r)
    for (name, method), runs in sorted(series.items()):
        runs.sort(key=lambda r: r.tokens_per_puzzle or 0)
        right.errorbar([r.tokens_per_puzzle for r in runs], [100 * r.accuracy for r in runs],
                       yerr=[[100 * (r.accuracy - r.ci_low) for r in runs], [100 * (r.ci_high - r.accuracy) for r in runs]],
                       marker={"greedy": "o", "best-of-n": "s", "self-backtrack": "^"}[method], capsize=2,
                       color=colours[name], linestyle={"greedy": "none", "best-of-n": "-", "self-backtrack": "--"}[method],
                       label=f"{name} · {SHOWN[method]}")
    right.set_xscale("log")
    right.set_xlabel("generated tokens per puzzle (log)")
    right.set_title("accuracy against inference tokens (N = 8, 16, 32 along each line)", fontsize=8)
    right.grid(alpha=0.3)
    right.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    for ax in (left, right):
        ax.set_ylim(0, max([100 * r.ci_high for r in rows] + [10]) + 5)
    fig.suptitle(f"Countdown-4 {args.split}: SFT, DPO, KTO, GRPO and self-backtracking on the same 3.4M model")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    print(f"wrote {out} ({len(rows)} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
