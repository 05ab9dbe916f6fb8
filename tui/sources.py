"""Where the TUI's events and puzzles come from: a live search, a stored trace, a split.

Everything here is plain Python (no Textual) and raises ``SbtError`` with a message the
app can show as is.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sbt_core.countdown import Puzzle
from sbt_core.errors import SbtError
from sbt_core.search.events import Done, Event, SearchResult, event_from_json
from sbt_core.search.self_backtrack import SelfBacktrackParams

from .demo import DEMO, demo_events

REPO_ROOT = Path(__file__).resolve().parent.parent


class ModelUnavailable(SbtError):
    """The chosen method needs a model that cannot be opened."""


@dataclass
class Settings:
    method: str = "self-backtrack"
    n: int = SelfBacktrackParams.n  # the budgets of `sbt solve` (self-backtracking's defaults)
    b: int = SelfBacktrackParams.b
    temperature: float | None = None  # None: what the puzzle's model recommends
    seed: int = 0
    model: str | None = None
    backend: str = "torch"
    split: str = "test_new"
    extra: dict = field(default_factory=dict)
    options: object = None  # sbt_core.settings.BackendOptions from the command line (None: the environment)
    rules: str = "all"  # the rules of a typed or drawn puzzle: "all" | "any" (sbt tui --rules)

    def model_for(self, puzzle: Puzzle) -> str | None:
        """The model that runs ``puzzle``: the one chosen, else the one trained for its size
        and rules (``sbt_core.models.default_model``, as ``sbt solve``; ``SbtError``, one
        line naming the models there, when there is none); None for a backend without models."""
        from sbt_core.backends import BACKENDS
        from sbt_core.models import default_model

        spec = BACKENDS.get(self.backend)
        if self.model is not None or (spec is not None and not spec.needs_model):
            return self.model
        return default_model(len(puzzle.numbers), puzzle.rules)

    def params_for(self, puzzle: Puzzle) -> dict:
        """The method parameters for this puzzle, layered as in ``sbt solve``
        (``sbt_core.engine.Engine.params``): the method's defaults, then what the model that
        will run it recommends (``search_defaults.json``; the default model depends on the
        puzzle's size), then these settings (an unset temperature is the model's)."""
        from sbt_core.engine import Engine
        from sbt_core.search import METHODS, method_params

        method = self.method if self.method in METHODS else "self-backtrack"  # the demo runs Algorithm 1
        given = {"n": self.n, "b": self.b, "temperature": self.temperature, **self.extra}
        try:
            model = self.model_for(puzzle) if METHODS[method].needs_model else self.model
            return Engine(model, self.backend, len(puzzle.numbers), self.options, allow_hidden=True).params(method, given)
        except SbtError:  # no model, or an unreadable search_defaults.json: opening the model says what is wrong
            return method_params(method, given)


def method_names() -> list[str]:
    from sbt_core.search import METHODS

    names = list(METHODS)
    return [*names, DEMO] if DEMO not in names else names


def needs_model(method: str) -> bool:
    from sbt_core.search import METHODS

    spec = METHODS.get(method)
    return bool(spec and spec.needs_model)


def open_backend(settings: Settings, puzzle: Puzzle):
    """The model backend for a live search (``sbt_core.engine.open_model``: torch, llama or
    the scripted perfect model); ``ModelUnavailable`` with a clear message otherwise."""
    try:
        from sbt_core.engine import open_model
    except ImportError as exc:
        raise ModelUnavailable(f"model backends are not available in this build ({exc})") from None
    try:
        return open_model(settings.model_for(puzzle), settings.backend, len(puzzle.numbers), options=settings.options,
                          allow_hidden=True).backend  # the TUI offers the scripted demo model
    except SbtError as exc:
        raise ModelUnavailable(str(exc)) from None
    except (ImportError, OSError) as exc:
        raise ModelUnavailable(f"cannot open the model: {type(exc).__name__}: {exc}") from None


def live_search(puzzle: Puzzle, settings: Settings, backend=None,
                on_event: Callable[[Event], None] | None = None) -> SearchResult | None:
    """One search with these settings (opens the backend if needed) through
    ``sbt_core.engine``: ``on_event`` sees each event as it comes (it may raise to stop)."""
    from sbt_core.engine import drain, solve

    if settings.method == DEMO:
        return drain(demo_events(puzzle, n=settings.n, b=settings.b, seed=settings.seed), on_event=on_event)[0]
    from sbt_core.search import METHODS

    spec = METHODS.get(settings.method)
    if spec is None:
        raise SbtError(f"unknown method {settings.method!r}; choose one of: {', '.join(method_names())}")
    if spec.needs_model and backend is None:
        backend = open_backend(settings, puzzle)
    return solve(backend, settings.method, puzzle, settings.params_for(puzzle), settings.seed, on_event=on_event)[0]


# --------------------------------------------------------------------------- stored traces


@dataclass
class Trace:
    puzzle: Puzzle
    method: str
    params: dict
    events: list[Event]
    label: str = ""  # where it came from, for display: Rich markup (a file name in it is escaped)


def trace_from_json(obj, label: str = "") -> Trace:
    """A trace from ``sbt solve --json --trace`` output, or from a bare JSON list of events."""
    if isinstance(obj, dict):
        events_json = obj.get("trace")
        if not isinstance(events_json, list):
            raise SbtError("this JSON has no 'trace' list (use `sbt solve --json --trace`)")
    elif isinstance(obj, list):
        events_json, obj = obj, {}
    else:
        raise SbtError("a trace is a JSON list of events or an object with a 'trace' list")
    try:
        events = [event_from_json(e) for e in events_json]
    except (KeyError, TypeError, ValueError) as exc:
        raise SbtError(f"not a valid event trace ({type(exc).__name__}: {exc})") from None
    done = next((e for e in reversed(events) if isinstance(e, Done)), None)
    if done is not None:
        puzzle, method, params = done.result.puzzle, done.result.method, done.result.params
    elif "numbers" in obj:
        puzzle = Puzzle(tuple(obj["numbers"]), obj["target"], obj.get("rules") or "all")
        method, params = obj.get("method", ""), obj.get("params", {})
    else:
        raise SbtError("the trace has no Done event, so its puzzle is unknown")
    return Trace(puzzle, method, dict(params or {}), events, label)


def load_trace_file(path: str | os.PathLike) -> Trace:
    p = Path(path)
    if not p.is_file():
        raise SbtError(f"trace file not found: {p}")
    try:
        obj = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise SbtError(f"{p}: not JSON ({exc})") from None
    from rich.markup import escape

    return trace_from_json(obj, label=escape(p.name))


def default_db() -> Path:
    """``$SBT_DB`` if set, else results.db at the repository root (``harness.store``)."""
    from harness.store import default_db_path

    return default_db_path()


def _read(db: Path, fn):
    """``fn(store)`` on a read-only view of the results database (``harness.store.read_only``:
    creates and changes nothing); one ``SbtError`` line when it is missing or unusable."""
    from harness.store import read_only

    if not db.is_file():
        raise SbtError(f"no results database at {db} (run `sbt bench` first)")
    try:
        return read_only(db, fn)
    except sqlite3.Error as exc:
        raise SbtError(f"{db}: not a results database ({exc})") from None


# stored text shown in the replay list (a DataTable reads str cells as Rich markup)
DISPLAY_TEXT = ("run_method", "run_model", "run_split", "failure")


def stored_results(db: Path | None = None, failed_only: bool = False, limit: int = 2000) -> list[dict]:
    """Stored per-puzzle results that have a trace, newest run first (no trace bodies).

    The text fields in ``DISPLAY_TEXT`` are escaped for Rich markup, ready to display: a
    hand-edited ``[/]`` in a method name is shown as is, never read as markup."""
    rows = _read(Path(db or default_db()), lambda store: store.traced_results(failed_only, limit))
    from rich.markup import escape

    for r in rows:
        try:
            r["puzzle"] = Puzzle(tuple(json.loads(r["numbers"])), r["target"], r.get("run_rules") or "all")
        except (TypeError, ValueError):
            r["puzzle"] = None
        for k in DISPLAY_TEXT:
            if r.get(k) is not None:
                r[k] = escape(str(r[k]))
    return [r for r in rows if r["puzzle"] is not None]


def stored_trace(rid: int, db: Path | None = None) -> Trace:
    row = _read(Path(db or default_db()), lambda store: store.result_by_id(rid))
    if row is None or not row["trace"]:
        raise SbtError(f"result {rid} has no stored trace")
    try:
        events = json.loads(row["trace"])
    except ValueError:
        raise SbtError(f"result {rid}: its trace is not JSON") from None
    t = trace_from_json(events, label=f"results.db #{rid}")
    return t


# --------------------------------------------------------------------------- puzzles from splits


def split_files(split: str, root: Path | None = None) -> list[Path]:
    """``data/<name>/<split>.jsonl`` files under the working folder and the repository."""
    roots = [root] if root else [Path.cwd() / "data", REPO_ROOT / "data"]
    seen, out = set(), []
    for r in roots:
        if r and r.is_dir():
            for p in sorted(r.glob(f"*/{split}.jsonl")):
                if p.resolve() not in seen:
                    seen.add(p.resolve())
                    out.append(p)
    return out


def random_puzzle(split: str, rng: random.Random, n_numbers: int | None = None, root: Path | None = None) -> tuple[Puzzle, str]:
    """A random puzzle from a split file (a random line, without reading a big file whole)."""
    files = split_files(split, root)
    if n_numbers is not None:
        pref = [p for p in files if f"{n_numbers}" in p.parent.name]
        files = pref or files
    if not files:
        raise SbtError(f"no {split}.jsonl found under data/*/ — make one with "
                       f"`sbt data generate --out data/countdown4`")
    path = files[0]
    size = path.stat().st_size
    for _ in range(20):
        with open(path, "rb") as f:
            f.seek(rng.randrange(max(1, size)))
            f.readline()
            line = f.readline() or (f.seek(0) or f.readline())
        try:
            return Puzzle.from_json(json.loads(line)), f"{path.parent.name}/{path.name}"
        except (ValueError, SbtError):
            continue
    raise SbtError(f"{path}: could not read a puzzle from it")
