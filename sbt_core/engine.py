"""One way to open a model and one way to run a search on it.

``open_model(model, backend, n_numbers, options)`` picks the backend from the registry
(``sbt_core.backends.BACKENDS``), resolves the model name / directory / GGUF once, reads
the model's ``search_defaults.json`` once and opens the backend: an ``Engine``.
``Engine(...)`` without opening is cheap (nothing is resolved or loaded until
``engine.backend`` is first used), so a command can layer and check the search parameters
(``engine.params``) before any weights load.

``solve(engine, method, puzzle, params, seed)`` is the one place that drains a method's
event stream: it returns the ``SearchResult`` of the final ``Done`` and, on request, the
events; ``on_event`` sees each event as it happens (the CLI's live view). ``sbt solve``,
``sbt bench`` (``harness.runner``), the TUI's live search and ``search.run_search`` go
through it (``drain`` for a stream that is not a registered method, like the TUI demo).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from .countdown import Puzzle
from .search import METHODS, method_params
from .search.events import Done, Event, SearchResult
from .settings import BackendOptions


@dataclass
class Engine:
    """A model as asked for (``model``: a name, a directory, a GGUF, or None for the default
    model for ``n_numbers`` inputs) with one backend; opened on first use of ``backend``."""

    model: str | None = None
    backend_name: str = "torch"
    n_numbers: int = 4
    options: BackendOptions | None = None
    allow_hidden: bool = False  # the scripted perfect model (tests, the TUI's demo); never a user's command
    _backend: Any = field(default=None, repr=False)
    _defaults: dict | None = field(default=None, repr=False)

    @property
    def needs_model(self) -> bool:
        from .backends import backend_spec

        return backend_spec(self.backend_name, self.allow_hidden).needs_model

    @property
    def search_defaults(self) -> dict:
        """The model's recommended sampling settings (``models.search_defaults``), read once;
        ``{}`` for a backend without models."""
        if self._defaults is None:
            from .backends import BACKENDS
            from .models import search_defaults

            spec = BACKENDS.get(self.backend_name)
            self._defaults = search_defaults(self.model, self.n_numbers) if spec is None or spec.needs_model else {}
        return self._defaults

    @property
    def defaults_name(self) -> str:
        """How an error line names the model's search defaults file (``{key} in PATH``)."""
        from .search import defaults_name

        return defaults_name(self.model, self.n_numbers)

    def params(self, method: str, *layers: dict | None, names: Sequence[str | None] = ()) -> dict[str, Any]:
        """``method``'s parameters: its defaults, then the model's search defaults (methods
        with a model only), then each of ``layers`` (``names``: where each layer came from,
        for error lines), checked against ``sbt_core.limits`` before anything loads."""
        if METHODS[method].needs_model:
            return method_params(method, self.search_defaults, *layers, names=(self.defaults_name, *names))
        return method_params(method, {}, *layers, names=(None, *names))

    @property
    def backend(self):
        """The opened backend (its model resolved by the registry entry and opened on first
        use; through the ``backends.load_backend`` attribute, so a test may replace it)."""
        if self._backend is None:
            from . import backends

            self._backend = backends.load_backend(self.model, self.backend_name, self.n_numbers, options=self.options,
                                                  **({"allow_hidden": True} if self.allow_hidden else {}))
        return self._backend

    @property
    def model_name(self) -> str | None:
        return getattr(self.backend, "model_name", None)


def open_model(model: str | os.PathLike | None = None, backend: str = "torch", n_numbers: int = 4,
               options: BackendOptions | None = None, allow_hidden: bool = False) -> Engine:
    """Read ``model``'s search defaults and open it with ``backend`` (a name in
    ``sbt_core.backends.BACKENDS``, whose entry resolves the model): ``SbtError`` (one line)
    when any of that fails."""
    engine = Engine(None if model is None else str(model), backend, n_numbers, options, allow_hidden)
    engine.search_defaults  # noqa: B018 - a broken search_defaults.json fails here, once
    engine.backend  # noqa: B018
    return engine


def solve(engine, method: str, puzzle: Puzzle, params: dict | None = None, seed: int = 0, *,
          keep_events: bool = False, on_event: Callable[[Event], None] | None = None
          ) -> tuple[SearchResult, list[Event] | None]:
    """Run ``method`` on ``puzzle`` to its ``Done`` event: ``(result, events)``, ``events``
    the whole stream when ``keep_events`` (else None). ``engine``: an ``Engine``, a bare
    backend, or None for a method without a model. ``on_event(event)`` is called for each
    event as it comes (a live view)."""
    if isinstance(engine, Engine):  # opened only for a method that needs a model
        backend = engine.backend if METHODS[method].needs_model else None
    else:
        backend = engine
    result, events = drain(METHODS[method].run(puzzle, backend, dict(params or {}), seed), keep_events=keep_events,
                           on_event=on_event)
    if result is None:
        raise RuntimeError(f"method {method!r} ended without a Done event")
    return result, events


def drain(stream: Iterable[Event], *, keep_events: bool = False, on_event: Callable[[Event], None] | None = None
          ) -> tuple[SearchResult | None, list[Event] | None]:
    """Consume an event stream: the result of its last ``Done`` (None if it has none) and,
    when ``keep_events``, every event; ``on_event`` sees each event as it comes (it may
    raise to stop the search)."""
    events: list[Event] | None = [] if keep_events else None
    result = None
    for event in stream:
        if events is not None:
            events.append(event)
        if on_event is not None:
            on_event(event)
        if isinstance(event, Done):
            result = event.result
    return result, events
