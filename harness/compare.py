"""``sbt bench compare RUN_A RUN_B``: two stored runs on the puzzles both have solved or not.

A run is named by its id or by its label (``self-backtrack n=32 b=1``, as ``sbt bench runs``
shows it), optionally ``LABEL@MODEL``; a label that names several runs is refused with
their ids. Shared puzzles are those with the same numbers (in order) and target; a puzzle
that appears k times in both runs pairs its first k occurrences.

Figures: accuracy of each on the shared puzzles, the paired difference A - B with a 95%
interval (Wald interval of a difference of paired proportions:
``((n10 - n01) / n) +- 1.96 * sqrt(n10 + n01 - (n10 - n01)^2 / n) / n``) and the exact
two-sided McNemar p-value (a binomial test of the discordant pairs, n10 against n01).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from fractions import Fraction

from sbt_core.errors import SbtError

from .runner import format_label
from .store import Store, decode

Z95 = 1.959963984540054


@dataclass
class Comparison:
    run_a: dict  # {"id", "label", "model", "split"}
    run_b: dict
    n: int  # shared puzzles
    a: float | None  # accuracy of A on them
    b: float | None
    diff: float | None  # a - b
    ci_low: float | None
    ci_high: float | None
    both: int  # solved by both
    only_a: int  # solved by A only (n10)
    only_b: int  # solved by B only (n01)
    neither: int
    p_value: float  # exact McNemar (two-sided); 1.0 without discordant pairs

    def to_json(self) -> dict:
        return asdict(self)


def mcnemar_exact(n10: int, n01: int) -> float:
    """Two-sided exact McNemar p-value: P(a Binomial(n10 + n01, 1/2) count is at least as
    far from the middle as the smaller of the two), computed exactly."""
    m = n10 + n01
    if m == 0:
        return 1.0
    k = min(n10, n01)
    tail = sum(math.comb(m, i) for i in range(k + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2 ** m)))


def paired_interval(n10: int, n01: int, n: int) -> tuple[float, float]:
    """95% Wald interval of (n10 - n01) / n, the difference of two paired proportions."""
    d = (n10 - n01) / n
    half = Z95 * math.sqrt(max(0.0, n10 + n01 - (n10 - n01) ** 2 / n)) / n
    return max(-1.0, d - half), min(1.0, d + half)


def _label(run: dict) -> str:
    params = decode(run).get("params")
    return format_label(run["method"], params if isinstance(params, dict) else {})


def find_run(store: Store, name: str) -> dict:
    """The run ``name`` stands for: an id, a label, or ``LABEL@MODEL`` (one line if none or several)."""
    text = name.strip()
    if text.isdigit():
        rows = store.runs("id = ?", [int(text)])
        if not rows:
            raise SbtError(f"no run #{text} in {store.path or 'the database'}")
        return rows[0]
    label, _, model = text.partition("@")
    hits = [r for r in store.runs() if _label(r) == label.strip() and (not model or r["model"] == model.strip())]
    if not hits:
        raise SbtError(f"no run labelled {text!r} (see `sbt bench runs`; a run id works too)")
    if len(hits) > 1:
        ids = ", ".join(f"#{r['id']} ({r['model'] or '-'}, {r['split'] or 'puzzles'})" for r in hits[:8])
        raise SbtError(f"{text!r} names {len(hits)} runs: {ids}; give a run id or LABEL@MODEL")
    return hits[0]


def _outcomes(store: Store, run_id: int) -> dict[tuple, list[int]]:
    out: dict[tuple, list[int]] = defaultdict(list)
    for r in store.query("select numbers, target, solved from results where run_id = ? order by puzzle_index",
                         [run_id]):
        out[(tuple(json.loads(r["numbers"])), r["target"])].append(int(r["solved"]))
    return out


def compare(store: Store, name_a: str, name_b: str) -> Comparison:
    run_a, run_b = find_run(store, name_a), find_run(store, name_b)
    a, b = _outcomes(store, run_a["id"]), _outcomes(store, run_b["id"])
    pairs = [(x, y) for key in a.keys() & b.keys() for x, y in zip(a[key], b[key])]
    n = len(pairs)
    both = sum(1 for x, y in pairs if x and y)
    only_a = sum(1 for x, y in pairs if x and not y)
    only_b = sum(1 for x, y in pairs if y and not x)
    acc_a = acc_b = diff = low = high = None
    if n:
        acc_a, acc_b = (both + only_a) / n, (both + only_b) / n
        diff = acc_a - acc_b
        low, high = paired_interval(only_a, only_b, n)

    def info(run: dict) -> dict:
        return {"id": run["id"], "label": _label(run), "model": run["model"], "split": run["split"] or run["puzzles"]}

    return Comparison(info(run_a), info(run_b), n, acc_a, acc_b, diff, low, high, both, only_a, only_b,
                      n - both - only_a - only_b, mcnemar_exact(only_a, only_b))
