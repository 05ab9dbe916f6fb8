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
    sql = f"""
        select r.id, r.method, r.params, r.model, r.model_sha256, r.backend, r.split, r.puzzles,
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
        rows.append(LeaderRow(
            run_id=r["id"], method=r["method"], params=params, label=format_label(r["method"], params),
            model=r["model"], model_sha256=r["model_sha256"], backend=r["backend"],
            split=r["split"] or Path(r["puzzles"] or "?").name, seed=r["seed"], status=effective_status(r),
            oracle=_is_oracle(r["method"]), n=n, n_puzzles=r["n_puzzles"], solved=k,
            accuracy=k / n if n else None, ci_low=lo, ci_high=hi,
            tokens_per_puzzle=r["tokens"], seconds_per_puzzle=r["wall_ms"] / 1000 if r["wall_ms"] is not None else None,
            backtracks_per_puzzle=r["backtracks"], model_calls_per_puzzle=r["model_calls"],
            failures=fails.get(r["id"], {}), git_sha=r["git_sha"], started=r["started"],
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
            key = (r.model, r.split, format_label(r.method, rest))
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


def _axis_title(axis: str) -> str:
    return "N (samples per expansion)" if axis == "n" else "b (backtracking budget)"


def _curve_label(c: Curve, groups: int) -> str:
    return c.name if groups == 1 else f"{c.name} · {c.model or '-'} · {c.split}"


PLOT_MARKERS = ("●", "▲", "■", "◆", "✚", "✖", "○", "△", "□", "◇")


def terminal_plots(curves: Sequence[Curve], width: int = 72, height: int = 16, color: bool = True) -> list[str]:
    """One plotext chart per axis (accuracy % vs N on a log2 axis, vs b) as text, legend below."""
    import plotext as plx

    out = []
    for axis in ("n", "b"):
        cs = [c for c in curves if c.axis == axis]
        if not cs:
            continue
        groups = len({(c.model, c.split) for c in cs})
        pos = (lambda x: math.log2(x)) if axis == "n" and all(p["x"] > 0 for c in cs for p in c.points) else float
        fig = plx.figure
        fig.clear()
        fig.plot_size(width, height)
        fig.theme("default" if color else "colorless")
        xs = sorted({p["x"] for c in cs for p in c.points})
        legend = []
        for i, c in enumerate(cs):
            mark = PLOT_MARKERS[i % len(PLOT_MARKERS)]
            px, py = [pos(p["x"]) for p in c.points], [100 * p["accuracy"] for p in c.points]
            fig.draw(fig.signal(px, py, marker="braille").lines().density("full"))
            fig.draw(fig.signal(px, py, marker=mark))
            legend.append(f"{mark} {_curve_label(c, groups)}")
        lo, hi = pos(xs[0]), pos(xs[-1])
        pad = (hi - lo) * 0.05 or 0.5
        fig.ruler("x").lim(lo - pad, hi + pad)
        fig.ruler("x").ticks([pos(x) for x in xs], [str(x) for x in xs])
        fig.ruler("y").lim(0, 100)
        fig.title(f"accuracy (%) vs {_axis_title(axis)}")
        fig.label(_axis_title(axis))
        out.append(fig.build().string(colorless=not color).rstrip() + "\n   " + "   ".join(legend))
        fig.clear()
    return out


def save_plots(curves: Sequence[Curve], paths: Sequence[str | Path], with_paper: bool = True) -> list[Path]:
    """Save the scaling curves (one panel per axis) as PNG / SVG (by suffix), with 95% bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_present = [a for a in ("n", "b") if any(c.axis == a for c in curves)]
    if not axes_present:
        return []
    # the legend goes under each panel (it used to cover the curves): taller with more series
    entries = max(sum(c.axis == a for c in curves) + (2 if a == "n" and with_paper else 0) for a in axes_present)
    fig, axs = plt.subplots(1, len(axes_present), figsize=(6.2 * len(axes_present), 4.4 + 0.17 * entries),
                            squeeze=False)
    for ax, axis in zip(axs[0], axes_present):
        cs = [c for c in curves if c.axis == axis]
        groups = len({(c.model, c.split) for c in cs})
        for c in cs:
            xs = [p["x"] for p in c.points]
            line, = ax.plot(xs, [100 * p["accuracy"] for p in c.points], marker="o", label=_curve_label(c, groups))
            ax.fill_between(xs, [100 * p["ci_low"] for p in c.points], [100 * p["ci_high"] for p in c.points],
                            color=line.get_color(), alpha=0.15, linewidth=0)
        if axis == "n":
            if with_paper:
                for method, b, name, style, mk in (("best-of-n", None, "paper 1B Best-of-N", ":", "x"),
                                                   ("self-backtrack", 1, "paper 1B self-backtrack b=1", "--", "+")):
                    pts = [(p_["n"], vals[1]) for _, m, p_, vals in paper.TABLE
                           if m == method and "n" in p_ and (b is None or p_.get("b") == b)]
                    if len(pts) >= 2:
                        ax.plot([x for x, _ in pts], [y for _, y in pts], linestyle=style, color="grey",
                                marker=mk, alpha=0.8, label=f"{name} (new targets, reported)")
            ax.set_xscale("log", base=2)
            xs = sorted({p["x"] for c in cs for p in c.points})
            ax.set_xticks(xs)
            ax.set_xticklabels([str(x) for x in xs])
        else:
            ax.set_xticks(sorted({p["x"] for c in cs for p in c.points}))
        ax.set_ylim(0, 100)
        ax.set_xlabel(_axis_title(axis))
        ax.set_ylabel("accuracy (%), 95% Wilson band")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    fig.suptitle("Test-time scaling on Countdown")
    fig.tight_layout()
    return _save_figure(fig, plt, paths, "--plot")


def compute_series(rows: Sequence[LeaderRow]) -> dict[tuple, list[LeaderRow]]:
    """Runs grouped for the equal-compute plot: (split, model, method and its params but
    N, b and width) -> the runs, fewest generated tokens per puzzle first (runs without
    tokens, e.g. the exact solver, are left out)."""
    series: dict[tuple, list[LeaderRow]] = {}
    for r in rows:
        if r.n == 0 or not r.tokens_per_puzzle:
            continue
        rest = {k: v for k, v in r.params.items() if k not in ("n", "b", "width")}
        series.setdefault((r.split, r.model or "-", format_label(r.method, rest)), []).append(r)
    return {k: sorted(v, key=lambda r: r.tokens_per_puzzle) for k, v in sorted(series.items())}


def save_compute_plot(rows: Sequence[LeaderRow], paths: Sequence[str | Path]) -> list[Path]:
    """Accuracy against generated tokens per puzzle (log axis) for every run: one panel per
    split, one series per model and method (with its settings but N / b / width, which move
    along the series; each point is labelled with them), 95% Wilson bars; oracle methods
    (they use the verifier) dotted and hollow. Read "matches pass@32" at equal cost here."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = compute_series(rows)
    splits = sorted({split for split, _, _ in series})
    if not splits:
        return []
    fig, axs = plt.subplots(len(splits), 1, figsize=(11, 6.5 * len(splits)), squeeze=False)
    for ax, split in zip(axs[:, 0], splits):
        ax.set_prop_cycle(color=plt.cm.tab20.colors)
        for (s_, model, name), runs in series.items():
            if s_ != split:
                continue
            xs = [r.tokens_per_puzzle for r in runs]
            ys = [100 * r.accuracy for r in runs]
            err = [[100 * (r.accuracy - r.ci_low) for r in runs], [100 * (r.ci_high - r.accuracy) for r in runs]]
            oracle = runs[0].oracle
            bars = ax.errorbar(xs, ys, yerr=err, marker="o", capsize=2, linestyle=":" if oracle else "-",
                               markerfacecolor="none" if oracle else None,
                               label=f"{name} · {model}" + (" (oracle)" if oracle else ""))
            for r, x, y in zip(runs, xs, ys):
                knob = " ".join(f"{k}={r.params[k]}" for k in ("n", "b", "width") if k in r.params)
                if knob:
                    ax.annotate(knob, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6,
                                color=bars[0].get_color())
        ax.set_xscale("log")
        ax.set_ylim(0, 100)
        ax.set_xlabel("generated tokens per puzzle (log)")
        ax.set_ylabel("accuracy (%), 95% Wilson interval")
        ax.set_title(split, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle("Accuracy at equal compute on Countdown")
    fig.tight_layout()
    return _save_figure(fig, plt, paths, "--compute-plot")


def _save_figure(fig, plt, paths: Sequence[str | Path], what: str) -> list[Path]:
    written = []
    try:
        for p in paths:
            p = Path(p)
            buf = io.BytesIO()
            fig.savefig(buf, format=p.suffix.lower().lstrip(".") or "png",
                        dpi=140 if p.suffix.lower() == ".png" else None)
            written.append(write_atomic(p, buf.getvalue(), what=what))
    finally:
        plt.close(fig)
    return written


# --------------------------------------------------------------------------- the report


@dataclass
class Report:
    rows: list[LeaderRow]
    curves: list[Curve]
    iterations: list[dict]
    db: str | None
    generated: str = field(default_factory=utcnow)

    def to_dict(self, with_paper: bool = True) -> dict:
        out = {
            "generated": self.generated,
            "db": self.db,
            "leaderboard": [r.to_dict() for r in self.rows],
            "curves": [c.to_dict() for c in self.curves],
            "iterations": self.iterations,
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
    return Report(rows, curves, iters, str(store.path) if store.path else None)


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


def render(report: Report, console, *, with_paper: bool = True, with_curves: bool = True,
           with_failures: bool = True, plot_width: int | None = None) -> None:
    """The report as Rich tables. Every stored string (method, model, split, label, path)
    is escaped: a ``[`` in a name is shown, never read as Rich markup."""
    from rich.markup import escape as esc
    from rich.table import Table

    t = Table(title="Leaderboard" + (f" — {esc(report.db)}" if report.db else ""), title_justify="left",
              header_style="bold", caption=("† oracle: uses the exact solver or the verifier" if any(r.oracle for r in report.rows) else None),
              caption_justify="left")
    for i, h in enumerate(SHORT_HEAD):
        t.add_column(h, justify="left" if i in (0, 1, 2, 5, 9) else "right", no_wrap=i in (0, 3, 4, 5, 6, 7, 8))
    prev = None
    for r in report.rows:
        group = (r.split, r.model)
        if prev is not None and group != prev:
            t.add_section()
        prev = group
        cells = [esc(c) for c in leaderboard_cells(r)]
        if r.status != "done":
            cells[-1] = f"[yellow]{cells[-1]}[/]"
        t.add_row(*cells)
    if not report.rows:
        console.print("[dim]no results yet: run `sbt bench` first[/]")
    else:
        console.print(t)

    if with_failures and any(r.failures for r in report.rows):
        ft = Table(title="Failure categories (unsolved puzzles)", title_justify="left", header_style="bold")
        for h in ["method", "model", "split"]:
            ft.add_column(h, no_wrap=h == "method")
        for f in FAILURES:
            ft.add_column(FAILURE_SHORT.get(f, f), justify="right", no_wrap=True)
        for r in report.rows:
            if r.failures:
                ft.add_row(esc(r.label), esc(_model(r)), esc(r.split), *failure_cells(r))
        console.print(ft)

    if with_curves and report.curves:
        width = plot_width or max(50, min(100, console.width - 2))
        for text in terminal_plots(report.curves, width=width, color=console.is_terminal):
            from rich.text import Text

            console.print(Text.from_ansi(text))

    if report.iterations:
        it = Table(title="Expert iteration (fast = greedy, slow = self-backtracking search)", title_justify="left",
                   header_style="bold")
        for h in ("experiment", "round", "model", "fast acc %", "slow acc %", "train paths", "status"):
            it.add_column(h, justify="right" if h in ("round", "fast acc %", "slow acc %", "train paths") else "left")
        for i in report.iterations:
            it.add_row(esc(str(i["experiment"])), str(i["round"]), esc(str(i.get("model") or "-")),
                       _pct(i.get("fast_acc")), _pct(i.get("slow_acc")), str(i.get("n_train_paths") or "-"),
                       esc(str(i.get("status") or "-")))
        console.print(it)

    if with_paper:
        other = "; ".join(f"{a} {b:g}" for a, b in paper.OTHER_1B)
        pt = Table(title="Paper reference — reported numbers, NOT our models", title_justify="left",
                   header_style="bold", caption=f"{paper.SOURCE}; Llama-3.2 fine-tuned, lenient checker. "
                   f"Other 1B: {other}. {' '.join(paper.NOTES)}", caption_justify="left")
        pt.add_column("method")
        for c in paper.COLUMNS:
            pt.add_column(c + " %", justify="right")
        for lab, _, _, vals in paper.TABLE:
            pt.add_row(lab, *[f"{v:.2f}" for v in vals])
        console.print(pt)


def render_text(report: Report, width: int = 140, **kwargs) -> str:
    """``render`` as plain text (the table format of ``--out x.txt``)."""
    from rich.console import Console

    buf = io.StringIO()
    render(report, Console(file=buf, width=width, color_system=None, highlight=False), **kwargs)
    return buf.getvalue()


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


__all__ = ["wilson", "leaderboard", "scaling_curves", "build_report", "render", "render_text", "export", "save_plots",
           "terminal_plots", "save_compute_plot", "compute_series", "to_csv", "to_json", "to_markdown", "Report", "LeaderRow", "Curve", "format_params",
           "json_safe", "strict_json", "write_atomic"]
