"""Search strategies over a model backend. Each yields the event stream of ``events``.

``METHODS`` maps a method name to its ``Method``: ``run(puzzle, backend, params, seed)``
yields events and ends with ``Done``; ``settings`` is its typed settings class
(``params.SearchParams``: each parameter's type, default and help), from which ``params``
(the names) and ``defaults`` come. ``params`` may be a settings instance or a dict layered
over the defaults (unknown keys are ignored). ``oracle`` methods use the verifier or the
solver, so they are not model-only methods. A new method is one module with a settings
class and a ``run`` function, and one line in ``_registry``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from ..countdown import Puzzle
from .events import Event, SearchResult
from .params import SearchParams


@dataclass(frozen=True)
class Method:
    name: str
    run: Callable[..., Iterator[Event]]
    settings: type[SearchParams]
    needs_model: bool
    oracle: bool  # uses the verifier or the solver, so it is not a fair model-only method
    help: str

    @property
    def params(self) -> tuple[str, ...]:
        return self.settings.names()

    @property
    def defaults(self) -> dict[str, Any]:
        return self.settings.defaults()


def _exact(*a, **k):
    from .exact import run_exact

    return run_exact(*a, **k)


def _registry() -> dict[str, Method]:
    from . import beam, best_of_n, dfs, greedy, pass_at_n, self_backtrack

    return {m.name: m for m in (
        Method("self-backtrack", self_backtrack.run_self_backtrack, self_backtrack.SelfBacktrackParams, True, False,
               "Algorithm 1: sample, roll <backtrack> samples back one step and re-expand (b rounds), "
               "pick by mean log-prob"),
        Method("greedy", greedy.run_greedy, greedy.GreedyParams, True, False, "greedy decoding"),
        Method("beam", beam.run_beam, beam.BeamParams, True, False, "beam search of width `width`"),
        Method("best-of-n", best_of_n.run_best_of_n, best_of_n.BestOfNParams, True, False,
               "N samples, pick by mean token log-prob (no verifier)"),
        Method("pass@n", pass_at_n.run_pass_at_n, pass_at_n.PassAtNParams, True, True,
               "oracle: solved when any of N samples verifies"),
        Method("dfs", dfs.run_dfs, dfs.DfsParams, True, True,
               "oracle: verifier-guided depth-first search over model steps, node budget `nodes`"),
        Method("exact", _exact, SearchParams, False, True, "symbolic solver (oracle)"),
    )}


METHODS: dict[str, Method] = _registry()


def method_params(method: str, *layers: dict | None, names: Sequence[str | None] = ()) -> dict[str, Any]:
    """The parameters a run of ``method`` records (``SearchParams.record``): its defaults
    overlaid by each layer in turn (e.g. the model's search defaults, then the user's
    choices); keys the method does not take and ``None`` values are skipped. Every value is checked against ``sbt_core.limits`` (``SbtError`` naming
    ``names[i]``, where layer ``i`` came from: see ``common.resolve_params``), so callers
    call this before loading a model. Valid numbers are kept as given."""
    return METHODS[method].settings.layered(*layers, names=names, keep_numbers=True).record()


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
