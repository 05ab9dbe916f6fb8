"""The search tree: expansions, their samples as branches, backtracks and rollbacks."""

from __future__ import annotations

import time

from rich.console import Group
from rich.text import Text
from rich.tree import Tree
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from ..state import ExpandView, SampleView, SearchState
from . import palette as P


def _prefix_text(prefix: list[str]) -> str:
    return "the start" if not prefix else "[" + " · ".join(prefix) + "]"


def expand_label(e: ExpandView) -> Text:
    t = Text()
    if e.parent is None and e.round == 0:
        t.append(f"⊕ expand {e.node + 1} ", style="bold " + P.ACCENT)
        t.append(f"×{e.n}", style=P.ACCENT)
        t.append(f" from {_prefix_text(e.prefix)}", style=P.DIM)
    else:
        t.append(f"⟳ re-expand {e.node + 1} ", style="bold " + P.BACK)
        t.append(f"×{e.n}", style=P.BACK)
        t.append(f" · round {e.round} · from {_prefix_text(e.prefix)}", style=P.DIM)
    return t


def sample_label(s: SampleView, active: bool, puzzle_ok, compact: bool = False) -> Text:
    t = Text()
    t.append(f"{s.index + 1:>2} ", style=P.DIM)
    n = len(s.lines)
    for k, line in enumerate(s.lines):
        if k:
            t.append(" › ", style=P.DIM)
        wrong_step = s.ending == "backtrack" and k == n - 1
        if wrong_step:
            t.append(line, style=P.BAD + " strike" if (s.undoing or s.rolled_back) else P.BAD + " bold")
        elif k < len(s.valid) and not s.valid[k]:
            t.append(line, style=P.BAD + " underline")
        else:
            t.append(line, style=P.TEXT)
    if active:
        t.append(" ▍", style=P.ACCENT)
    if s.ending == "goal":
        ok = puzzle_ok(s)
        goal = "Goal" if compact else "Goal Reached!"
        t.append(f"  ✓ {goal}" if ok else f"  ✗ {goal} (wrong)", style=(P.GOOD if ok else P.BAD) + " bold")
    elif s.ending == "backtrack":
        t.append("  ⟲ <backtrack>", style=P.BAD + " bold")
    elif s.ending == "none":
        t.append("  … no ending", style=P.DIM)
    if s.logprob is not None:
        t.append(f"  {P.signed(s.logprob)}", style=P.DIM)
    return t


def build_tree(state: SearchState, width: int = 0, console=None):
    """The tree as a renderable, and the line of ``state.latest`` in it (None if unknown).

    The line is measured the way rich lays a tree out: each level indents by 4 and a
    label wraps to the width left.
    """
    if not state.roots:
        if state.result is not None or state.selected is not None:
            return Text(f"No samples: {state.method or 'this method'} does not expand states.", style=P.DIM), None
        if state.puzzle is not None:
            return Text("Waiting for the first expansion…", style=P.DIM), None
        return Text("No search yet. Type a puzzle and press Enter.", style=P.DIM), None
    from sbt_core.countdown import verify

    def ok(s: SampleView) -> bool:
        exp = state.expands.get(s.node)
        prefix = exp.prefix if exp else []
        return bool(state.puzzle and verify(state.puzzle, [*prefix, *s.lines]).ok)

    compact = 0 < width < 60
    y = [0]
    found: list[int] = []

    def place(label: Text, depth: int, obj=None) -> Text:
        if obj is not None and obj is state.latest:
            found.append(y[0])
        if width and console is not None:
            y[0] += max(1, len(label.wrap(console, max(8, width - 4 * depth))))
        else:
            y[0] += 1
        return label

    def add_expand(parent, e: ExpandView, depth: int):
        label = place(expand_label(e), depth, e)
        node = Tree(label, guide_style=P.DIM) if parent is None else parent.add(label)
        for s in e.samples:
            child = node.add(place(sample_label(s, s is state.active, ok, compact), depth + 1, s))
            if s.undoing:
                child.add(place(Text("↩ rolling back…", style=P.BACK), depth + 2))
            elif s.rolled_back:
                back = s.back_prefix
                if not s.children:
                    child.add(place(Text(f"↩ back to {_prefix_text(back)}", style=P.BACK), depth + 2))
            for sub in s.children:
                add_expand(child, sub, depth + 2)
        return node

    trees = [add_expand(None, e, 0) for e in state.roots]
    return Group(*trees), (found[0] if found else None)


class SearchTree(VerticalScroll):
    """A scrolling view of the tree; follows the newest line unless the user scrolled up."""

    DEFAULT_CSS = "SearchTree > Static { width: 100%; }"
    # left/right/home/end belong to playback (the app); keep only vertical scrolling here
    inherit_bindings = False
    BINDINGS = [
        Binding("up", "scroll_up", show=False),
        Binding("down", "scroll_down", show=False),
        Binding("pageup", "page_up", show=False),
        Binding("pagedown", "page_down", show=False),
    ]

    def compose(self):
        yield Static(id="tree-body")

    _last = 0.0
    _timer = None
    _pending: tuple | None = None

    def show(self, state: SearchState, follow: bool = True) -> None:
        """Redraw; with ``follow``, keep the line the last frame changed in view.

        Big trees are redrawn at most ~6 times a second (the last change always lands)."""
        self._pending = (state, follow)
        samples = sum(len(e.samples) for e in state.expands.values())
        gap = 0.0 if samples < 60 else 0.16
        wait = self._last + gap - time.monotonic()
        if wait <= 0:
            self._draw()
        elif self._timer is None:
            self._timer = self.set_timer(wait, self._draw)

    def _draw(self) -> None:
        self._timer = None
        if self._pending is None:
            return
        state, follow = self._pending
        self._pending = None
        self._last = time.monotonic()
        width = self.scrollable_content_region.width
        tree, line = build_tree(state, width, self.app.console)
        self.query_one("#tree-body", Static).update(tree)
        if not follow:
            return
        if line is None:
            if state.result is not None or state.selected is not None:
                self.call_after_refresh(self.scroll_end, animate=False)
            return
        height = self.scrollable_content_region.height
        if not (self.scroll_y + 1 <= line <= self.scroll_y + height - 3):
            target = max(0, line - max(1, height // 3))
            self.call_after_refresh(self._scroll_when_laid_out, target, 4)

    def _scroll_when_laid_out(self, y: int, tries: int) -> None:
        """Scroll to ``y`` once the new content is laid out (max_scroll_y has grown)."""
        if y > self.max_scroll_y and tries > 0:
            self.call_after_refresh(self._scroll_when_laid_out, y, tries - 1)
            return
        self.scroll_to(y=y, animate=False)
