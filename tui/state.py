"""What the TUI shows, as a pure function of a prefix of the search event stream.

The app keeps every event it has received (from a live search or a stored trace) and
splits each one into *frames*: a sample reveals its steps one frame at a time, a
backtrack takes two frames (undo the wrong step, settle on the parent state). The
playback cursor counts frames; stepping back rebuilds the state from frame 0, so the
view is always exactly what the recorded stream says, whatever the direction.

No Textual here: this module is tested and reused without a terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from sbt_core.countdown import Puzzle, parse_step, replay, verify
from sbt_core.search.events import (
    Backtrack,
    Candidate,
    Done,
    Event,
    Expand,
    Sample,
    SearchResult,
    Select,
    Stats,
    StepEvent,
)


@dataclass(frozen=True)
class Frame:
    event: int  # index into the event list
    phase: int = 0  # sub-step of that event


# --------------------------------------------------------------------------- the view model


@dataclass
class SampleView:
    node: int
    index: int
    lines: list[str] = field(default_factory=list)  # lines revealed so far
    ending: str | None = None  # None while generating; "goal" | "backtrack" | "none"
    logprob: float | None = None
    tokens: int = 0
    valid: list[bool] = field(default_factory=list)  # per revealed line: legal and correct here
    undoing: bool = False  # first backtrack frame: the wrong step is being dropped
    rolled_back: bool = False  # second backtrack frame: back at the parent state
    back_prefix: list[str] = field(default_factory=list)  # the state it rolled back to
    children: list["ExpandView"] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.ending is not None


@dataclass
class ExpandView:
    node: int
    prefix: list[str]
    n: int
    round: int
    parent: SampleView | None = None
    samples: list[SampleView] = field(default_factory=list)

    def sample(self, index: int) -> SampleView:
        for s in self.samples:
            if s.index == index:
                return s
        s = SampleView(self.node, index)
        self.samples.append(s)
        self.samples.sort(key=lambda x: x.index)
        return s


@dataclass
class CandidateView:
    lines: list[str]
    score: float
    count: int
    ok: bool  # what the strict verifier says (shown; never used for selection)


@dataclass
class Focus:
    """What the puzzle panel shows: the state after ``lines``, in a given mood."""

    lines: list[str] = field(default_factory=list)
    mode: str = "idle"  # idle | step | goal | backtrack | undo | rollback | final
    wrong: str | None = None  # the dropped step (undo / rollback)


@dataclass
class Tile:
    value: int
    tag: str = "base"  # base | made (an earlier step's result) | new (this step's result) | wrong | back


@dataclass
class Board:
    tiles: list[Tile]
    applied: list[tuple[str, bool]]  # step lines and whether each applied cleanly
    problem: str | None = None  # why the last step could not be applied
    reached: bool = False  # the steps are a complete, correct answer under the puzzle's rules


def reached(puzzle: Puzzle, lines: Iterable[str]) -> bool:
    """Whether step ``lines`` are a complete, correct answer to ``puzzle`` (``countdown.verify``:
    rules "all": one number left, the target; rules "any": the last step made the target,
    other numbers may be left)."""
    lines = list(lines)
    return bool(lines) and verify(puzzle, lines).ok


def board(puzzle: Puzzle, lines: Iterable[str], wrong: str | None = None, mode: str = "step") -> Board:
    """Apply steps to the puzzle's numbers, tile by tile (the result takes the first operand's
    place); ``sbt_core.countdown.replay`` says which steps are allowed and why not, and
    ``reached`` whether they answer the puzzle under its rules (with rules "any" numbers
    may be left on the board)."""
    tiles = [Tile(x) for x in puzzle.numbers]
    seq = list(lines)
    applied: list[tuple[str, bool]] = [(line, False) for line in seq]
    problem = None
    for k, move in enumerate(replay(puzzle, seq)):  # the rules: sbt_core.countdown
        if not move.ok:
            problem = f"{seq[k]!r} is not a step" if move.step is None else move.detail
            break
        step = move.step
        ia = next(i for i, t in enumerate(tiles) if t.value == step.a)
        ib = next(i for i, t in enumerate(tiles) if t.value == step.b and i != ia)
        for t in tiles:
            if t.tag == "new":
                t.tag = "made"
        tiles[ia] = Tile(step.result, "new")
        del tiles[ib]
        applied[k] = (seq[k], True)
    if mode in ("undo", "rollback") and wrong is not None:
        for t in tiles:
            if t.tag == "new":
                t.tag = "made"
        step = parse_step(wrong)
        if mode == "undo" and step is not None:
            # the wrong step's operands come back; its result is shown being dropped
            tiles.append(Tile(step.result, "wrong"))
        elif mode == "rollback":
            for t in tiles:
                if step is not None and t.value in (step.a, step.b) and t.tag != "back":
                    t.tag = "back"
    elif mode == "backtrack":
        for t in tiles:
            if t.tag == "new":
                t.tag = "wrong"
    done = problem is None and mode not in ("undo", "rollback", "backtrack") and reached(puzzle, seq)
    return Board(tiles, applied, problem, done)


@dataclass
class Counters(Stats):
    """A search's ``Stats`` as they grow, frame by frame, and the samples drawn so far."""

    samples: int = 0
    wall_ms: float | None = None  # known once the search is done


class SearchState:
    """The view of a search after some frames of its event stream."""

    def __init__(self, puzzle: Puzzle | None = None, method: str = "", params: dict | None = None):
        self.puzzle = puzzle
        self.method = method
        self.params = dict(params or {})
        self.roots: list[ExpandView] = []
        self.expands: dict[int, ExpandView] = {}
        self.waiting: list[SampleView] = []  # rolled back, their state not yet re-expanded
        self.candidates: dict[tuple[str, ...], CandidateView] = {}
        self.selected: Select | None = None
        self.result: SearchResult | None = None
        self.counters = Counters()
        self.focus = Focus()
        self.message = ""
        self.log: list[str] = []  # recent messages, oldest first
        self.active: SampleView | None = None  # the sample being generated (cursor in the tree)
        self.latest: SampleView | ExpandView | None = None  # what the last frame changed

    # -- helpers
    def _expand_for(self, node: int) -> ExpandView:
        if node not in self.expands:  # a sample without its Expand (tolerated): invent the node
            self.apply(Expand(node, [], 0, 0), 0)
        return self.expands[node]

    def _validity(self, prefix: list[str], lines: list[str]) -> list[bool]:
        if self.puzzle is None:
            return [parse_step(x) is not None for x in lines]
        b = board(self.puzzle, [*prefix, *lines])
        return [ok for _, ok in b.applied[len(prefix):]]

    def sorted_candidates(self) -> list[CandidateView]:
        return sorted(self.candidates.values(), key=lambda c: (-c.score, c.lines))

    # -- the transition function
    def apply(self, ev: Event, phase: int = 0) -> None:
        before = self.message
        self._apply(ev, phase)
        if self.message and (self.message != before or not self.log):
            self.log.append(self.message)
            del self.log[:-200]

    def _apply(self, ev: Event, phase: int = 0) -> None:
        c = self.counters
        if isinstance(ev, Expand):
            parent = None
            for s in self.waiting:
                if s.rolled_back and self._prefix_of(s) == list(ev.prefix):
                    parent = s
                    break
            view = ExpandView(ev.node, list(ev.prefix), ev.n, ev.round, parent)
            if parent is not None:
                parent.children.append(view)
                self.waiting = [s for s in self.waiting if self._prefix_of(s) != list(ev.prefix)]
            else:
                self.roots.append(view)
            self.expands[ev.node] = view
            c.expansions += 1
            c.model_calls += 1
            self.focus = Focus(list(ev.prefix), "step")
            where = "the start" if not ev.prefix else f"[{' · '.join(ev.prefix)}]"
            again = f" (round {ev.round})" if ev.round else ""
            self.message = f"expand {ev.node + 1}{again}: sampling {ev.n} continuations from {where}"
            self.active = None
            self.latest = view
        elif isinstance(ev, StepEvent):
            exp = self._expand_for(ev.node)
            s = exp.sample(ev.index)
            s.lines.append(ev.line)
            s.valid = self._validity(exp.prefix, s.lines)
            self.active = self.latest = s
            self.focus = Focus([*exp.prefix, *s.lines], "step")
            self.message = f"{self.who(ev.node, ev.index)}: {ev.line}" + ("" if s.valid[-1] else "  (not a legal step here)")
        elif isinstance(ev, Sample):
            exp = self._expand_for(ev.node)
            s = exp.sample(ev.index)
            lines = list(ev.lines)
            s.lines = lines[: min(phase, len(lines))]
            s.valid = self._validity(exp.prefix, s.lines)
            self.active = self.latest = s
            if phase > len(lines) or not lines:
                s.lines = lines
                s.valid = self._validity(exp.prefix, s.lines)
                s.ending = ev.ending
                s.logprob = ev.logprob
                s.tokens = ev.tokens
                c.tokens += ev.tokens
                c.samples += 1
                self.active = None
                full = [*exp.prefix, *lines]
                if ev.ending == "goal":
                    self.focus = Focus(full, "goal")
                    self.message = f"{self.who(ev.node, ev.index)}: Goal Reached!  (mean log-prob {_signed(ev.logprob)})"
                elif ev.ending == "backtrack":
                    c.backtracks += 1  # the model emitted <backtrack>
                    self.focus = Focus(full, "backtrack")
                    wrong = lines[-1] if lines else "?"
                    self.message = f"{self.who(ev.node, ev.index)}: <backtrack> — rejects {wrong}"
                else:
                    self.focus = Focus(full, "step")
                    self.message = f"{self.who(ev.node, ev.index)}: ended without an answer"
            else:
                self.focus = Focus([*exp.prefix, *s.lines], "step")
                self.message = f"{self.who(ev.node, ev.index)}: {s.lines[-1]}" if s.lines else self.who(ev.node, ev.index)
        elif isinstance(ev, Backtrack):
            exp = self._expand_for(ev.node)
            s = exp.sample(ev.index)
            self.latest = s
            if phase == 0:
                s.undoing = True
                if s.ending != "backtrack":  # a rollback not announced by the sample (e.g. dfs)
                    c.backtracks += 1
                self.focus = Focus(list(ev.prefix), "undo", ev.wrong)
                self.message = f"{self.who(ev.node, ev.index)}: backtrack, dropping {ev.wrong}"
            else:
                s.undoing = False
                s.rolled_back = True
                s.back_prefix = list(ev.prefix)
                self.waiting.append(s)
                self.focus = Focus(list(ev.prefix), "rollback", ev.wrong)
                where = "the start" if not ev.prefix else f"[{' · '.join(ev.prefix)}]"
                self.message = f"{self.who(ev.node, ev.index)}: rolled back to {where}"
                b = self.params.get("b")
                if isinstance(b, int) and ev.round >= b:
                    self.message += " (budget b spent: not expanded again)"
            self.active = None
        elif isinstance(ev, Candidate):
            key = tuple(ev.lines)
            ok = bool(self.puzzle and verify(self.puzzle, ev.lines).ok)
            self.candidates[key] = CandidateView(list(ev.lines), ev.score, ev.count, ok)
            c.candidates = len(self.candidates)
            self.message = f"candidate ×{ev.count}, score {_signed(ev.score)}: {' · '.join(ev.lines)}"
        elif isinstance(ev, Select):
            self.selected = ev
            self.focus = Focus(list(ev.lines), "final")
            why = f" ({ev.reason})" if ev.reason else ""
            self.message = ("selected the best candidate" + why) if ev.lines else ("no answer" + why)
        elif isinstance(ev, Done):
            r = ev.result
            self.result = r
            if self.puzzle is None:
                self.puzzle = r.puzzle
            self.method = self.method or r.method
            c.model_calls = r.stats.model_calls or c.model_calls
            c.tokens = r.stats.tokens or c.tokens
            c.backtracks = r.stats.backtracks or c.backtracks
            c.wall_ms = r.stats.wall_ms
            self.focus = Focus(list(r.lines), "final")
            self.message = ("✓ " if r.verdict.ok else "✗ ") + r.verdict.describe()
            self.active = None

    @staticmethod
    def who(node: int, index: int) -> str:
        """How messages name a sample: ``sample 3`` in the first expansion, ``sample 2.3`` later."""
        return f"sample {index + 1}" if node == 0 else f"sample {node + 1}.{index + 1}"

    def _prefix_of(self, s: SampleView) -> list[str]:
        return s.back_prefix


def _signed(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}".replace("-", "−")


def frames_for(ev: Event, seen: dict[tuple[int, int], str]) -> list[int]:
    """The phases an event is shown in (none: it adds nothing to what is on screen).

    Strategies may stream a sample's steps as StepEvents before its Sample event, or
    send the Sample first and its StepEvents after (as a summary). ``seen`` remembers,
    per sample, which came first: a Sample after streamed steps only closes the sample;
    StepEvents after their Sample are redundant and get no frame; a Sample with no
    streamed steps reveals its steps one frame at a time.
    """
    if isinstance(ev, StepEvent):
        key = (ev.node, ev.index)
        if seen.get(key) == "sample":
            return []
        seen[key] = "steps"
        return [0]
    if isinstance(ev, Sample):
        key = (ev.node, ev.index)
        n = len(ev.lines)
        streamed = seen.get(key) == "steps"
        seen[key] = "sample"
        if streamed or n == 0:
            return [n + 1]
        return list(range(1, n + 2))
    if isinstance(ev, Backtrack):
        return [0, 1]
    return [0]


class Timeline:
    """Events, their frames and a cursor; the state at the cursor is kept up to date."""

    def __init__(self, puzzle: Puzzle | None = None, method: str = "", params: dict | None = None):
        self.puzzle, self.method, self.params = puzzle, method, dict(params or {})
        self.events: list[Event] = []
        self.frames: list[Frame] = []
        self._seen: dict[tuple[int, int], str] = {}
        self.cursor = 0
        self.state = SearchState(puzzle, method, params)

    def add(self, ev: Event) -> None:
        i = len(self.events)
        self.events.append(ev)
        self.frames.extend(Frame(i, p) for p in frames_for(ev, self._seen))

    def extend(self, events: Iterable[Event]) -> None:
        for ev in events:
            self.add(ev)

    @property
    def at_end(self) -> bool:
        return self.cursor >= len(self.frames)

    @property
    def finished(self) -> bool:
        """The stream is complete (its Done event is in) — not necessarily shown yet."""
        return bool(self.events) and isinstance(self.events[-1], Done)

    def forward(self, k: int = 1) -> int:
        moved = 0
        while moved < k and self.cursor < len(self.frames):
            f = self.frames[self.cursor]
            self.state.apply(self.events[f.event], f.phase)
            self.cursor += 1
            moved += 1
        return moved

    def seek(self, cursor: int) -> None:
        cursor = max(0, min(cursor, len(self.frames)))
        if cursor < self.cursor:
            self.state = SearchState(self.puzzle, self.method, self.params)
            self.cursor = 0
        self.forward(cursor - self.cursor)

    def back(self, k: int = 1) -> None:
        self.seek(self.cursor - k)
