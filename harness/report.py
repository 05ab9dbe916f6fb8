"""The leaderboard: accuracy with 95% Wilson intervals, cost per puzzle, failure
categories, test-time scaling curves (terminal and PNG/SVG), JSON / CSV / Markdown export.

One leaderboard row is one run (method, params, model, split, seed); its accuracy is
over the results stored for it so far (a running or interrupted run says so in
``status``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from sbt_core.countdown import Failure
from sbt_core.files import json_safe, strict_json, write_atomic

from . import paper
from .runner import format_label, format_params
from .store import Store, utcnow

Z95 = 1.959963984540054
FAILURES = [f.value for f in Failure]
FORMATS = ("table", "json", "csv", "markdown")
SUFFIX_FORMATS = {".json": "json", ".csv": "csv", ".md": "markdown", ".markdown": "markdown", ".txt": "table"}


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n (95% by default); (0, 1) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k <= 0 else max(0.0, centre - half)
    hi = 1.0 if k >= n else min(1.0, centre + half)
    return lo, hi


@dataclass
class LeaderRow:
    run_id: int
    method: str
    params: dict
    label: str
    model: str | None
    model_sha256: str | None
    backend: str | None
    split: str
    seed: int
    status: str
    oracle: bool
    n: int  # puzzles with a result
    n_puzzles: int | None  # puzzles asked for
    solved: int
    accuracy: float | None
    ci_low: float | None
    ci_high: float | None
    tokens_per_puzzle: float | None
    seconds_per_puzzle: float | None
    backtracks_per_puzzle: float | None
    model_calls_per_puzzle: float | None
    failures: dict[str, int] = field(default_factory=dict)
    git_sha: str | None = None
    started: str | None = None
    superseded: bool = False  # weights no longer shipped under this name (shown NAME@SHA8)
    puzzles: str | None = None  # the puzzle file (two splits of one name: data/countdown3 vs data/countdown4)
    rules: str = "all"  # the Countdown rules of the run's puzzles (runs.rules; "any": TV rules)
    training: dict | None = None  # what training the run's model cost (runs.training; model_compute)

    def to_dict(self) -> dict:
        return asdict(self)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def effective_status(run: dict) -> str:
    """The stored status, except that a ``running`` run whose process (on this host) is
    gone shows as ``stopped`` (killed without a word: re-run its command to continue)."""
    status = run.get("status") or "?"
    if status == "running" and run.get("pid") and run.get("host") == socket.gethostname():
        if not _pid_alive(int(run["pid"])):
            return "stopped"
    return status


def _is_oracle(method: str) -> bool:
    try:
        from sbt_core.search import METHODS

        return bool(METHODS[method].oracle) if method in METHODS else False
    except Exception:  # pragma: no cover - registry import problems must not break reports
        return False


def leaderboard(store: Store, *, split: str | None = None, model: str | None = None,
                methods: Sequence[str] | None = None, run_ids: Iterable[int] | None = None,
                include_empty: bool = False) -> list[LeaderRow]:
    """One row per run (filtered), best accuracy first within each split and model."""
    where, args = [], []
    if split:
        where.append("(r.split = ? or r.puzzles like ?)")
        args += [split, f"%{split}"]
    if model:
        where.append("(r.model = ? or r.model_sha256 like ?)")
        args += [model, f"{model}%"]
    if methods:
        where.append(f"r.method in ({', '.join('?' * len(methods))})")
        args += list(methods)
    if run_ids is not None:
        ids = list(run_ids)
        where.append(f"r.id in ({', '.join('?' * len(ids))})" if ids else "0")
        args += ids
    columns = store.db["runs"].columns_dict
    rules = "r.rules" if "rules" in columns else "null"  # (a database before m004)
    training = "r.training" if "training" in columns else "null"  # (before m005)
    sql = f"""
        select r.id, r.method, r.params, r.model, r.model_sha256, r.backend, r.split, r.puzzles, {rules} as rules,
               {training} as training,
               r.seed, r.status, r.n_puzzles, r.git_sha, r.started, r.host, r.pid,
               count(x.puzzle_index) as n, coalesce(sum(x.solved), 0) as k,
               avg(x.tokens) as tokens, avg(x.wall_ms) as wall_ms,
               avg(x.backtracks) as backtracks, avg(x.model_calls) as model_calls
        from runs r left join results x on x.run_id = r.id
        {"where " + " and ".join(where) if where else ""}
        group by r.id
    """
    fails: dict[int, dict[str, int]] = {}
    for f in store.query("select run_id, coalesce(failure, 'no_answer') failure, count(*) c from results "
                         "where not solved group by run_id, failure"):
        fails.setdefault(f["run_id"], {})[f["failure"]] = f["c"]
    rows = []
    for r in store.query(sql, args):
        if not r["n"] and not include_empty:
            continue
        params = _params(r["params"])
        n, k = r["n"], r["k"]
        lo, hi = wilson(k, n) if n else (None, None)
        run_rules = r["rules"] or "all"
        rows.append(LeaderRow(
            run_id=r["id"], method=r["method"], params=params,
            label=format_label(r["method"], params) + ("" if run_rules == "all" else f" rules={run_rules}"),
            model=r["model"], model_sha256=r["model_sha256"], backend=r["backend"],
            split=r["split"] or Path(r["puzzles"] or "?").name, seed=r["seed"], status=effective_status(r),
            oracle=_is_oracle(r["method"]), n=n, n_puzzles=r["n_puzzles"], solved=k,
            accuracy=k / n if n else None, ci_low=lo, ci_high=hi,
            tokens_per_puzzle=r["tokens"], seconds_per_puzzle=r["wall_ms"] / 1000 if r["wall_ms"] is not None else None,
            backtracks_per_puzzle=r["backtracks"], model_calls_per_puzzle=r["model_calls"],
            failures=fails.get(r["id"], {}), git_sha=r["git_sha"], started=r["started"], puzzles=r["puzzles"],
            rules=run_rules, training=_params(r["training"]) or None,
        ))
    _tell_weights_apart(rows)
    rows.sort(key=lambda x: (x.split, x.model or "", -(x.accuracy or 0), x.method, x.label, x.seed))
    return rows


def _params(text: str | None) -> dict:
    """A run's stored params; {} for a hand-edited value that is not a JSON object."""
    try:
        params = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {}
    return params if isinstance(params, dict) else {}


def _tell_weights_apart(rows: list[LeaderRow]) -> None:
    """A model name that was run with different weights (a retrained ``countdown4-backtrack``)
    is shown as ``NAME@SHA8`` per checkpoint, so its rows and scaling curves never mix; the
    weights now shipped under that name in models/ keep the plain name."""
    shas: dict[str, set[str]] = {}
    for r in rows:
        if r.model:
            shas.setdefault(r.model, set()).add(r.model_sha256 or "")
    shipped = {name: _shipped_sha(name) for name, seen in shas.items() if len(seen) > 1}
    for r in rows:
        if r.model in shipped and r.model_sha256 != shipped[r.model]:
            r.model = f"{r.model}@{(r.model_sha256 or 'unknown')[:8]}"
            r.superseded = True


def _shipped_sha(name: str) -> str | None:
    """sha256 of the weights shipped as ``name``: the model directory's weight files, or for
    a llama.cpp label ``NAME:QUANT`` its ``model-QUANT.gguf`` (what the llama backend hashes)."""
    from sbt_core.models import files_sha256, model_sha256, models_dir

    base, _, quant = name.partition(":")
    path = models_dir() / base
    try:
        if not (path / "config.json").is_file():
            return None
        if not quant:
            return model_sha256(path)
        gguf = path / f"model-{quant}.gguf"
        return files_sha256([gguf]) if gguf.is_file() else None
    except Exception:  # an unreadable directory: no name is kept plain
        return None


# --------------------------------------------------------------------------- scaling curves


@dataclass
class Curve:
    axis: str  # "n" or "b"
    name: str  # the series: method and its other params
    model: str | None
    split: str
    points: list[dict]  # x, accuracy, ci_low, ci_high, n, solved (sorted by x)

    def to_dict(self) -> dict:
        return asdict(self)


def scaling_curves(rows: Sequence[LeaderRow], min_points: int = 2) -> list[Curve]:
    """Accuracy vs N (per method and b) and vs b (per N), for methods with those params.

    Runs that differ only by seed are pooled. Series with fewer than ``min_points``
    distinct x values are dropped.
    """
    curves = []
    for axis in ("n", "b"):
        series: dict[tuple, dict[Any, list[int]]] = {}
        for r in rows:
            if axis not in r.params or r.n == 0:
                continue
            rest = {k: v for k, v in r.params.items() if k != axis}
            key = (r.model, r.split, format_label(r.method, rest) + ("" if r.rules == "all" else f" rules={r.rules}"))
            pts = series.setdefault(key, {})
            acc = pts.setdefault(r.params[axis], [0, 0])
            acc[0] += r.solved
            acc[1] += r.n
        for (model, split, name), pts in series.items():
            if len(pts) < min_points:
                continue
            points = []
            for x in sorted(pts):
                k, n = pts[x]
                lo, hi = wilson(k, n)
                points.append({"x": x, "accuracy": k / n, "ci_low": lo, "ci_high": hi, "n": n, "solved": k})
            curves.append(Curve(axis, name, model, split, points))
    curves.sort(key=lambda c: (c.axis, c.split, c.model or "", c.name))
    return curves


# --------------------------------------------------------------------------- equal compute


def compute_series(rows: Sequence[LeaderRow]) -> dict[tuple, list[LeaderRow]]:
    """Runs grouped for the equal-compute plot: (puzzle file, model, method and its params
    but N, b and width) -> the runs, fewest generated tokens per puzzle first (runs without
    tokens, e.g. the exact solver, are left out)."""
    series: dict[tuple, list[LeaderRow]] = {}
    for r in rows:
        if r.n == 0 or not r.tokens_per_puzzle:
            continue
        rest = {k: v for k, v in r.params.items() if k not in ("n", "b", "width")}
        name = format_label(r.method, rest) + ("" if r.rules == "all" else f" rules={r.rules}")
        series.setdefault((r.puzzles or r.split, r.model or "-", name), []).append(r)
    return {k: sorted(v, key=lambda r: r.tokens_per_puzzle) for k, v in sorted(series.items())}


# --------------------------------------------------------------------------- the report


@dataclass
@dataclass
class ModelCompute:
    """What it cost to train a model now shipped in models/ (its training.json): every stage
    summed (``sbt train --objective dpo|kto|grpo`` records its base's cost too). ``tokens``:
    trained tokens; ``generated_tokens``: tokens sampled for training (GRPO's rollouts;
    the samples of a ``--prefs`` harvest are not counted: see the prefs file's record)."""

    model: str
    objective: str
    base: str | None
    tokens: int | None
    generated_tokens: int | None
    wall_s: float | None
    hardware: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def model_compute(rows: Sequence[LeaderRow]) -> list[ModelCompute]:
    """The training compute of each model of ``rows``: as its runs recorded it
    (``runs.training``), else, for weights shipped under that name, its training.json
    (``sbt_core.models.training_cost``); models with neither are left out."""
    from sbt_core.models import training_cost

    found: dict[str, dict] = {}
    for r in rows:
        if r.model and r.training and r.model not in found:
            found[r.model] = r.training
    for name in {r.model for r in rows if r.model and not r.superseded} - set(found):
        cost = training_cost(name.partition(":")[0])
        if cost:
            found[name] = cost
    out = []
    for name, c in sorted(found.items()):
        try:
            out.append(ModelCompute(name, str(c["objective"]), c.get("base"), c.get("tokens"),
                                    c.get("generated_tokens"), c.get("wall_s"), c.get("hardware")))
        except (KeyError, TypeError, AttributeError):
            continue
    return out


@dataclass
class Report:
    rows: list[LeaderRow]
    curves: list[Curve]
    iterations: list[dict]
    db: str | None
    generated: str = field(default_factory=utcnow)
    compute: list[ModelCompute] = field(default_factory=list)

    def to_dict(self, with_paper: bool = True) -> dict:
        out = {
            "generated": self.generated,
            "db": self.db,
            "leaderboard": [r.to_dict() for r in self.rows],
            "curves": [c.to_dict() for c in self.curves],
            "iterations": self.iterations,
            "training_compute": [c.to_dict() for c in self.compute],
        }
        if with_paper:
            out["paper"] = {"source": paper.SOURCE, "columns": list(paper.COLUMNS), "rows": paper.as_rows(),
                            "other_1b": [{"label": a, "accuracy": b} for a, b in paper.OTHER_1B],
                            "notes": paper.NOTES}
        return out


def build_report(store: Store, all_weights: bool = False, **filters) -> Report:
    """The leaderboard (every run) and the scaling curves: of the weights now shipped under
    each name only, unless ``all_weights`` (superseded checkpoints, ``NAME@SHA8``, too)."""
    rows = leaderboard(store, **filters)
    iters = store.iterations()
    curves = scaling_curves([r for r in rows if all_weights or not r.superseded])
    return Report(rows, curves, iters, str(store.path) if store.path else None, compute=model_compute(rows))


# --------------------------------------------------------------------------- text formats


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def _num(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _secs(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _model(r: LeaderRow) -> str:
    return r.model or "-"


CSV_FIELDS = ["run_id", "method", "params", "label", "model", "model_sha256", "backend", "split", "seed", "status",
              "oracle", "n", "n_puzzles", "solved", "accuracy", "ci_low", "ci_high", "tokens_per_puzzle",
              "seconds_per_puzzle", "backtracks_per_puzzle", "model_calls_per_puzzle", "git_sha", "started"]


def to_csv(report: Report) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS + [f"failure_{f}" for f in FAILURES])
    for r in report.rows:
        d = json_safe(r.to_dict())
        d["params"] = strict_json(r.params, sort_keys=True)
        w.writerow([("" if d[k] is None else d[k]) for k in CSV_FIELDS] + [r.failures.get(f, 0) for f in FAILURES])
    return buf.getvalue()


def to_json(report: Report, with_paper: bool = True) -> str:
    return strict_json(report.to_dict(with_paper), indent=1) + "\n"


def _md_table(head: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(head) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, head)) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return "\n".join(lines)


def leaderboard_cells(r: LeaderRow) -> list[str]:
    ci = "-" if r.ci_low is None else f"{_pct(r.ci_low)}–{_pct(r.ci_high)}"
    return [r.label + (" †" if r.oracle else ""), _model(r), r.split, f"{r.n:,}", _pct(r.accuracy), ci,
            _num(r.tokens_per_puzzle), _secs(r.seconds_per_puzzle), _num(r.backtracks_per_puzzle, 2), r.status]


LEADER_HEAD = ["method", "model", "split", "puzzles", "acc %", "95% CI", "tokens/puzzle", "s/puzzle",
               "backtracks/puzzle", "status"]
SHORT_HEAD = ["method", "model", "split", "n", "acc %", "95% CI", "tok/pz", "s/pz", "bt/pz", "status"]
FAILURE_SHORT = {"invalid_format": "format", "unknown_number": "unknown #", "incorrect_result": "incorrect",
                 "illegal_operation": "illegal op", "unused_numbers": "unused #", "target_not_reached": "not reached",
                 "no_answer": "no answer"}


COMPUTE_HEAD = ["model", "objective", "base", "trained tokens", "sampled tokens", "train time", "hardware"]


def compute_cells(c: ModelCompute) -> list[str]:
    hours = "-" if c.wall_s is None else f"{c.wall_s / 3600:.2f} h"
    return [c.model, c.objective, c.base or "-", "-" if c.tokens is None else f"{c.tokens:,}",
            "-" if not c.generated_tokens else f"{c.generated_tokens:,}", hours, c.hardware or "-"]


def failure_cells(r: LeaderRow) -> list[str]:
    cells = []
    for f in FAILURES:
        c = r.failures.get(f, 0)
        cells.append("-" if not c else f"{c} ({100 * c / r.n:.0f}%)" if r.n else str(c))
    return cells


def to_markdown(report: Report, with_paper: bool = True) -> str:
    parts = ["## Leaderboard", ""]
    if report.rows:
        parts.append(_md_table(LEADER_HEAD, [leaderboard_cells(r) for r in report.rows], "lllrrlrrrl"))
        if any(r.oracle for r in report.rows):
            parts += ["", "† oracle: uses the exact solver or the verifier, not a model-only method."]
    else:
        parts.append("(no results)")
    failing = [r for r in report.rows if r.failures]
    if failing:
        parts += ["", "### Failure categories (unsolved puzzles)", ""]
        parts.append(_md_table(["method", "model", "split"] + FAILURES,
                               [[r.label, _model(r), r.split] + failure_cells(r) for r in failing], "lll" + "r" * len(FAILURES)))
    if report.curves:
        parts += ["", "### Test-time scaling", ""]
        rows = []
        for c in report.curves:
            rows.append([c.name, c.model or "-", c.split, c.axis,
                         ", ".join(f"{c.axis}={p['x']}: {_pct(p['accuracy'])}" for p in c.points)])
        parts.append(_md_table(["series", "model", "split", "axis", "accuracy %"], rows, "lllll"))
    if report.compute:
        parts += ["", "### Training compute (every stage of each model)", ""]
        parts.append(_md_table(COMPUTE_HEAD, [compute_cells(c) for c in report.compute], "lllrrrl"))
    if report.iterations:
        parts += ["", "### Expert iteration", ""]
        parts.append(_md_table(["experiment", "round", "model", "fast acc %", "slow acc %", "train paths", "status"],
                               [[i["experiment"], str(i["round"]), i.get("model") or "-", _pct(i.get("fast_acc")),
                                 _pct(i.get("slow_acc")), str(i.get("n_train_paths") or "-"), i.get("status") or "-"]
                                for i in report.iterations], "lrlrrrl"))
    if with_paper:
        parts += ["", f"### Paper reference (reported, not our models): {paper.SOURCE}", ""]
        parts.append(_md_table(["method"] + list(paper.COLUMNS),
                               [[lab] + [f"{v:.2f}" for v in vals] for lab, _, _, vals in paper.TABLE]))
        parts += ["", "Other 1B references: " + "; ".join(f"{a} {b:g}" for a, b in paper.OTHER_1B) + ".",
                  " ".join(paper.NOTES)]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- rich


def export(report: Report, fmt: str, with_paper: bool = True) -> str:
    if fmt == "json":
        return to_json(report, with_paper)
    if fmt == "csv":
        return to_csv(report)
    if fmt == "markdown":
        return to_markdown(report, with_paper)
    raise ValueError(f"unknown format {fmt!r}")


def format_from_suffix(path: str | Path) -> str | None:
    return SUFFIX_FORMATS.get(Path(path).suffix.lower())


__all__ = ["wilson", "leaderboard", "scaling_curves", "build_report", "export",
           "compute_series", "to_csv", "to_json", "to_markdown", "Report", "LeaderRow", "Curve", "format_params",
           "json_safe", "strict_json", "write_atomic"]
