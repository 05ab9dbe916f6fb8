"""What the CLI shows: Rich tables, progress bars and plots of the harness's data.

The harness (``harness.report``, ``harness.runner``, ``harness.iterate``) computes and
stores; this module only displays: the leaderboard as Rich tables (``render``,
``render_text``), terminal and image plots (``terminal_plots``, ``save_plots``,
``save_compute_plot``), the bench progress bar (``RichProgress``, a ``runner.Observer``) and
the expert-iteration table (``iterations_table``).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Sequence

from harness import paper
from harness.report import (COMPUTE_HEAD, FAILURE_SHORT, FAILURES, SHORT_HEAD, Curve, LeaderRow, Report, _model, _pct,
                            compute_cells, compute_series, failure_cells, leaderboard_cells)
from sbt_core import settings
from sbt_core.files import write_atomic


def stdout_console():
    """A Rich console on stdout (tables of `sbt bench report`, `runs`, `iterate`): the
    terminal's width, or 120 columns when stdout is a file and $COLUMNS is not set."""
    import sys

    from rich.console import Console

    wide = None if sys.stdout.isatty() or settings.columns_set() else 120
    return Console(highlight=False, width=wide)


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

    if report.compute:
        ct = Table(title="Training compute (every stage of each model)", title_justify="left", header_style="bold")
        for h in COMPUTE_HEAD:
            ct.add_column(h, justify="right" if h in ("trained tokens", "sampled tokens", "train time") else "left")
        for c in report.compute:
            ct.add_row(*(esc(x) for x in compute_cells(c)))
        console.print(ct)

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


def save_compute_plot(rows: Sequence[LeaderRow], paths: Sequence[str | Path]) -> list[Path]:
    """Accuracy against generated tokens per puzzle (log axis) for every run: one panel per
    puzzle file, one series per model and method (with its settings but N / b / width, which move
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


class RichProgress:
    """A rich progress bar per run with the running accuracy (stderr by default); where the
    console is not a terminal (a log under nohup), a line per 10% of each run instead."""

    def __init__(self, console=None, n_runs: int = 1) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.fields[index]}"),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[acc]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.n_runs = n_runs
        self.i = 0
        self.task = None
        self.n = self.k = 0
        self.lines = not self.console.is_interactive  # a bar only redraws on a terminal
        self._label = ""
        self._total = self._logged = 0

    def __enter__(self) -> "RichProgress":
        if not self.lines:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if not self.lines:
            self.progress.__exit__(*exc)

    def _line(self, what: str) -> None:
        self.console.print(f"{self._label}: {self.n:,}/{self._total:,} puzzles, {' '.join(self._acc().split())}{what}",
                           markup=False, highlight=False, soft_wrap=True)
        self._logged = self.n

    def _acc(self) -> str:
        if not self.n:
            return "acc    -  "
        return f"acc {100 * self.k / self.n:5.1f}%"

    def run_started(self, spec, run, total, done, solved) -> None:
        self.i += 1
        self.n, self.k = done, solved
        model = f" · {run['model']}" if run.get("model") else ""
        if run.get("backend_options"):  # a run with non-default options (bfloat16, cuda, ...)
            model += f" · {settings.format_options(json.loads(run['backend_options']))}"
        index = f"[{self.i}/{self.n_runs}] #{run['id']}"
        if self.lines:
            self._label, self._total = f"{index} {spec.label()}{model}", total
            self._line(" (resumed)" if done else "")
            return
        self.task = self.progress.add_task(f"{spec.label()}{model}", total=total, completed=done,
                                           acc=self._acc(), index=index)

    def result(self, spec, run, row) -> None:
        self.n += 1
        self.k += int(bool(row["solved"]))
        if self.lines:
            if self.n - self._logged >= max(1, self._total // 10) and self.n < self._total:
                self._line("")
            return
        self.progress.update(self.task, advance=1, acc=self._acc())

    def run_finished(self, spec, run, status) -> None:
        if self.lines:
            self._line(f", {status}")
            return
        if status != "done" and self.task is not None:
            self.progress.update(self.task, acc=f"{self._acc()} [yellow]{status}[/]")




def iterations_table(rows: list[dict], title: str | None = None):
    """A rich table of fast / slow accuracy per round."""
    from rich.table import Table

    t = Table(title=title or "Expert iteration: fast = greedy, slow = self-backtracking search",
              title_justify="left", header_style="bold",
              caption="searched: train puzzles searched; verified: answers kept for fine-tuning; "
                      "Δ fast: greedy accuracy vs round 0 (points)", caption_justify="left")
    for h, right in (("round", True), ("searched", True), ("verified", True), ("fast %", True), ("slow %", True),
                     ("Δ fast", True), ("fast/slow", True), ("status", False), ("model", False)):
        t.add_column(h, justify="right" if right else "left", overflow="fold" if h == "model" else "ellipsis",
                     no_wrap=h != "model")
    base = next((r.get("fast_acc") for r in rows if r["round"] == 0), None)

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    for r in rows:
        fast = r.get("fast_acc")
        slow = r.get("slow_acc")
        delta = "-" if fast is None or base is None or r["round"] == 0 else f"{100 * (fast - base):+.1f}"
        ratio = f"{fast / slow:.2f}" if fast is not None and slow else "-"
        t.add_row(str(r["round"]), str(r.get("n_search_puzzles") or "-"),
                  str(r["n_train_paths"]) if r.get("n_train_paths") is not None else "-",
                  pct(fast), pct(slow), delta, ratio, r.get("status") or "-", r.get("model") or "-")
    return t
