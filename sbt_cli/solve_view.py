"""Live rich rendering of a search event stream for ``sbt solve``: ``CompactView`` (the
default: one line per expanded state) and ``SearchView`` (``--verbose``: one line per event)."""

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


class CompactView:
    """One line per expanded state, printed when its round is in: the state, how its samples
    ended (Goal Reached!, <backtrack>, unfinished) and its best candidate (else its most
    likely sample); then the selection and the verified answer."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.nodes: dict[int, dict] = {}  # node -> {"expand": Expand, "samples": [Sample]}

    def _flush(self) -> None:
        for node in self.nodes.values():
            e, samples = node["expand"], node["samples"]
            if not samples:
                continue
            ends = [s.ending for s in samples]
            counts = ", ".join(f"{ends.count(k)} {label}" for k, label in
                               (("goal", "goal"), ("backtrack", "backtrack"), ("none", "unfinished")) if ends.count(k))
            goals = [s for s in samples if s.ending == "goal"]
            best = max(goals or samples, key=lambda s: s.logprob)  # a candidate if there is one
            end = {"goal": "[yellow]Goal Reached![/]", "backtrack": "[red]<backtrack>[/]"}.get(best.ending, "[dim]…[/]")
            self.console.print(f"[bold cyan]round {e.round}[/] {_path(e.prefix)} [dim]x{e.n}:[/] {counts}; "
                               f"{'best candidate' if goals else 'likeliest'}: {_path(best.lines)} {end} "
                               f"[dim]lp {best.logprob:.3f}[/]")
        self.nodes.clear()

    def __call__(self, event: Event) -> None:
        if isinstance(event, Expand):
            if any(n["samples"] for n in self.nodes.values()):  # a new round: the last one is complete
                self._flush()
            self.nodes[event.node] = {"expand": event, "samples": []}
        elif isinstance(event, Sample) and event.node in self.nodes:
            self.nodes[event.node]["samples"].append(event)
        elif isinstance(event, Select):
            self._flush()
            self.console.print(f"[bold]select[/]: {escape(event.reason)}")
        elif isinstance(event, Done):
            show_result(self.console, event.result)


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
