"""Model backends behind one protocol (``base.Backend``); heavy imports stay inside each.

``load_backend(model, backend, n_numbers, options)`` resolves a model name or directory and opens it with
the torch (transformers) or llama.cpp backend; ``scripted.ScriptedBackend`` needs no
model at all.
"""

from __future__ import annotations

import importlib.util

from ..errors import SbtError
from ..settings import BackendOptions
from .base import Backend, Completion

BACKENDS = ("torch", "llama")


def llama_available() -> bool:
    return importlib.util.find_spec(f"{__name__}.llama_backend") is not None


def load_backend(model: str | None = None, backend: str = "torch", n_numbers: int = 4,
                 options: BackendOptions | None = None) -> Backend:
    """Open ``model`` (a name in models/, a directory, or None for the default model
    for ``n_numbers`` inputs) with ``backend`` ("torch" or "llama") and ``options``
    (``sbt_core.settings.BackendOptions``; None: from the environment)."""
    from ..models import default_model, resolve_model

    if backend not in BACKENDS:
        raise SbtError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend == "llama" and not llama_available():
        raise SbtError("the llama backend is not available yet in this build; use --backend torch")
    if backend == "llama":  # a GGUF: a .gguf file or a directory holding one (weights optional)
        from .llama_backend import LlamaBackend, resolve_gguf_model  # type: ignore[import-not-found]

        return LlamaBackend(resolve_gguf_model(model or default_model(n_numbers)), options)
    path = resolve_model(model or default_model(n_numbers))
    from .torch_backend import TorchBackend

    return TorchBackend(path, options)


__all__ = ["Backend", "Completion", "load_backend", "BACKENDS"]
