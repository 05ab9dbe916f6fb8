"""Live rich rendering of a search event stream for ``sbt solve`` (one line per event)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from sbt_core.countdown import expression, parse_step
from sbt_core.search.events import Backtrack, Candidate, Done, Event, Expand, Sample, SearchResult, Select


def _path(lines: list[str]) -> str:
    return " | ".join(escape(x) for x in lines) if lines else "(start)"


class SearchView:
    """Prints each event as it arrives: samples, backtracks in red, the answer in green."""

    def __init__(self, console: Console, max_samples: int = 64) -> None:
        self.console = console
        self.max_samples = max_samples
        self.shown = 0
        self.hidden = 0

    def __call__(self, event: Event) -> None:
        c = self.console
        if isinstance(event, Expand):
            c.print(f"[bold cyan]expand[/] node {event.node} round {event.round}: {_path(event.prefix)}  x{event.n}")
        elif isinstance(event, Sample):
            if self.shown >= self.max_samples:
                self.hidden += 1
                return
            self.shown += 1
            style = {"goal": "yellow", "backtrack": "red"}.get(event.ending, "dim")
            end = {"goal": "Goal Reached!", "backtrack": "<backtrack>"}.get(event.ending, "(unfinished)")
            c.print(f"  [dim]{event.node}.{event.index:<2}[/] {_path(event.lines)} [{style}]{escape(end)}[/]"
                    f"  [dim]lp {event.logprob:.3f}[/]")
        elif isinstance(event, Backtrack):
            c.print(f"  [red]backtrack: drop {escape(event.wrong) or '(nothing)'} -> back to {_path(event.prefix)}[/]")
        elif isinstance(event, Candidate):
            times = f" x{event.count}" if event.count > 1 else ""
            c.print(f"  [yellow]candidate[/] {_path(event.lines)}  score {event.score:.3f}{times}")
        elif isinstance(event, Select):
            if self.hidden:
                c.print(f"  [dim]... {self.hidden} more samples not shown[/]")
            c.print(f"[bold]select[/]: {escape(event.reason)}")
        elif isinstance(event, Done):
            show_result(c, event.result)


def show_result(c: Console, result: SearchResult) -> None:
    s = result.stats
    if result.solved:
        steps = [parse_step(x) for x in result.lines]
        c.print("[bold green]answer (verified)[/]")
        for line in result.lines:
            c.print(f"  [green]{escape(line)}[/]")
        c.print(f"[bold green]{escape(expression(result.puzzle, steps))}[/]")
    else:
        c.print("[bold red]no verified answer[/]")
        if result.lines:
            c.print("best attempt:")
            for line in result.lines:
                c.print(f"  [red]{escape(line)}[/]")
        c.print(f"[red]why it fails: {escape(result.verdict.describe())}[/]")
    c.print(f"[dim]model calls {s.model_calls}, tokens {s.tokens}, expansions {s.expansions}, "
            f"backtracks {s.backtracks}, candidates {s.candidates}, {s.wall_ms:.0f} ms[/]")
