"""Search strategies over a model backend. Each yields the event stream of ``events``.

``METHODS`` maps a method name to its ``Method``: ``run(puzzle, backend, params, seed)``
yields events and ends with ``Done``; ``params`` names the parameters it reads and
``defaults`` their default values (unknown keys in ``params`` are ignored). ``oracle``
methods use the verifier or the solver, so they are not model-only methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from ..countdown import Puzzle
from .events import Event, SearchResult


@dataclass(frozen=True)
class Method:
    name: str
    run: Callable[..., Iterator[Event]]
    needs_model: bool
    oracle: bool  # uses the verifier or the solver, so it is not a fair model-only method
    params: tuple[str, ...]
    help: str
    defaults: dict[str, Any] = field(default_factory=dict)


def _exact(*a, **k):
    from .exact import run_exact

    return run_exact(*a, **k)


def _registry() -> dict[str, Method]:
    from . import beam, best_of_n, dfs, greedy, pass_at_n, self_backtrack

    def method(name, run, defaults, *, oracle, help, needs_model=True):
        return Method(name, run, needs_model, oracle, tuple(defaults), help, dict(defaults))

    return {m.name: m for m in (
        method("self-backtrack", self_backtrack.run_self_backtrack, self_backtrack.DEFAULTS, oracle=False,
               help="Algorithm 1: sample, roll <backtrack> samples back one step and re-expand (b rounds), "
                    "pick by mean log-prob"),
        method("greedy", greedy.run_greedy, greedy.DEFAULTS, oracle=False, help="greedy decoding"),
        method("beam", beam.run_beam, beam.DEFAULTS, oracle=False, help="beam search of width `width`"),
        method("best-of-n", best_of_n.run_best_of_n, best_of_n.DEFAULTS, oracle=False,
               help="N samples, pick by mean token log-prob (no verifier)"),
        method("pass@n", pass_at_n.run_pass_at_n, pass_at_n.DEFAULTS, oracle=True,
               help="oracle: solved when any of N samples verifies"),
        method("dfs", dfs.run_dfs, dfs.DEFAULTS, oracle=True,
               help="oracle: verifier-guided depth-first search over model steps, node budget `nodes`"),
        method("exact", _exact, {}, oracle=True, needs_model=False, help="symbolic solver (oracle)"),
    )}


METHODS: dict[str, Method] = _registry()


def method_params(method: str, *layers: dict | None, names: Sequence[str | None] = ()) -> dict[str, Any]:
    """``method``'s defaults overlaid by each layer in turn (e.g. the model's search
    defaults, then the user's choices); keys the method does not take and ``None`` values
    are skipped. Every value is checked against ``sbt_core.limits`` (``SbtError`` naming
    ``names[i]``, where layer ``i`` came from: see ``common.resolve_params``), so callers
    call this before loading a model. Valid numbers are kept as given."""
    from .common import resolve_params

    return resolve_params(METHODS[method].defaults, *layers, names=names, keep_numbers=True)


def defaults_name(model: str | None, n_numbers: int = 4) -> str:
    """The ``names`` entry for a model's ``search_defaults.json`` layer of ``method_params``
    (``{key} in PATH``), so that a bad value there is blamed on the file, not on an option."""
    from ..models import SEARCH_DEFAULTS_FILE, default_model, model_dir_of

    path = str(model_dir_of(model or default_model(n_numbers)) / SEARCH_DEFAULTS_FILE)
    return "{key} in " + path.replace("{", "{{").replace("}", "}}")


def run_search(method: str, puzzle: Puzzle, backend=None, params: dict | None = None, seed: int = 0) -> SearchResult:
    """Run a method to completion and return its result (events discarded):
    ``sbt_core.engine.solve`` without the events."""
    from ..engine import solve

    return solve(backend, method, puzzle, params, seed)[0]
