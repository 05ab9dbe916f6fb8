"""Model backends behind one protocol (``base.Backend``); heavy imports stay inside each.

``BACKENDS`` is the registry: a backend name -> its ``BackendSpec`` (how to resolve a model
name for it, and how to open the resolved model with ``sbt_core.settings.BackendOptions``).
Adding a backend is one module (``my_backend.py``, heavy imports inside) and one line in
``BACKENDS``. ``load_backend(model, backend, n_numbers, options)`` resolves and opens in one
call (``sbt_core.engine.open_model`` adds the model's search defaults); the ``scripted``
backend (``scripted.ScriptedBackend``, a perfect model made from the exact solver) needs no
model at all.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import SbtError
from ..settings import BackendOptions
from .base import Backend, Completion

Target = str | Callable[..., Any]  # a callable, or "module:attribute" imported when first used


def _load(target: Target) -> Callable[..., Any]:
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module, package=__name__), attr)


@dataclass(frozen=True)
class BackendSpec:
    """One backend of the registry.

    ``opener(resolved, options)``: the ``Backend`` for a resolved model (``resolved`` is
    what ``resolver`` returned; ``options`` a ``BackendOptions`` or None: from the
    environment). ``resolver(name_or_path)``: a model name (in models/), a directory or a
    file -> the path ``opener`` takes, ``SbtError`` (one line) when there is none; None:
    the backend needs no model. Both may be ``"module:attribute"`` strings (a leading dot
    is relative to ``sbt_core.backends``), imported only when used, so naming a backend
    costs no heavy import. ``available()``: False when this build lacks it (``missing``
    says what to do). ``listed``: offered in "choose one of" lines (the scripted backend,
    for tests and demos, is not)."""

    name: str
    opener: Target
    resolver: Target | None = None
    available: Callable[[], bool] = lambda: True
    missing: str = ""
    listed: bool = True

    @property
    def needs_model(self) -> bool:
        return self.resolver is not None

    def resolve(self, name_or_path: str | os.PathLike) -> Path | None:
        """What ``opener`` takes for this model (None for a backend without models)."""
        return _load(self.resolver)(name_or_path) if self.resolver is not None else None

    def open(self, resolved: Path | None, options: BackendOptions | None = None) -> Backend:
        return _load(self.opener)(resolved, options)


def llama_available() -> bool:
    return importlib.util.find_spec(f"{__name__}.llama_backend") is not None


def _open_torch(resolved: Path | None, options: BackendOptions | None = None) -> Backend:
    from .torch_backend import TorchBackend  # a plain import: through importlib.import_module,
    # `import torch` measured about 0.1 s slower in `sbt solve` (torch's own submodules)

    return TorchBackend(resolved, options)


def _open_llama(resolved: Path | None, options: BackendOptions | None = None) -> Backend:
    from .llama_backend import LlamaBackend

    return LlamaBackend(resolved, options)


def _open_scripted(_resolved: Path | None, _options: BackendOptions | None = None) -> Backend:
    from .scripted import ScriptedBackend, solver_continuation

    return ScriptedBackend(default=solver_continuation)


BACKENDS: dict[str, BackendSpec] = {spec.name: spec for spec in (
    BackendSpec("torch", _open_torch, "sbt_core.models:resolve_model"),
    # a GGUF: a .gguf file or a directory holding one (safetensors weights optional)
    BackendSpec("llama", _open_llama, ".llama_backend:resolve_gguf_model", available=llama_available,
                missing="the llama backend is not available yet in this build; use --backend torch"),
    BackendSpec("scripted", _open_scripted, listed=False),
)}


def backend_names() -> list[str]:
    """The backends a user is offered (``BACKENDS`` without the test/demo ones)."""
    return [name for name, spec in BACKENDS.items() if spec.listed]


def backend_spec(backend: str, allow_hidden: bool = False) -> BackendSpec:
    """The registry entry of ``backend``; ``SbtError`` (one line) when it is unknown, not
    available in this build, or hidden (``listed=False``: the scripted perfect model, for
    tests and the TUI's demo) unless ``allow_hidden``: a user's command never runs it."""
    spec = BACKENDS.get(backend)
    if spec is None or (not spec.listed and not allow_hidden):
        raise SbtError(f"unknown backend {backend!r}; choose one of: {', '.join(backend_names())}")
    if not spec.available():
        raise SbtError(spec.missing or f"the {backend} backend is not available in this build")
    return spec


def resolve_for(backend: str, model: str | os.PathLike | None, n_numbers: int = 4) -> Path | None:
    """Where ``model`` (None: the default model for ``n_numbers`` inputs) is for ``backend``:
    the path its opener takes, checked; None for a backend without models."""
    from ..models import default_model

    return backend_spec(backend).resolve(model or default_model(n_numbers))


def load_backend(model: str | os.PathLike | None = None, backend: str = "torch", n_numbers: int = 4,
                 options: BackendOptions | None = None, allow_hidden: bool = False) -> Backend:
    """Open ``model`` (a name in models/, a directory, or None for the default model
    for ``n_numbers`` inputs) with ``backend`` (a name in ``BACKENDS``) and ``options``
    (``sbt_core.settings.BackendOptions``; None: from the environment)."""
    from ..models import default_model

    spec = backend_spec(backend, allow_hidden)
    return spec.open(spec.resolve(model or default_model(n_numbers)), options)


__all__ = ["BACKENDS", "Backend", "BackendSpec", "Completion", "backend_names", "backend_spec", "load_backend",
           "resolve_for"]
