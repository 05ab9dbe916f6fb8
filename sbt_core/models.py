"""Where checkpoints live, the shipped defaults, and resolving a model by name or path.

A model is a Hugging Face model directory (config.json, *.safetensors, tokenizer files).
Named models live in ``models/`` next to the packages (override with ``SBT_MODELS_DIR``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import SbtError

MODELS_DIR = Path(os.environ.get("SBT_MODELS_DIR") or Path(__file__).resolve().parent.parent / "models")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def models_dir() -> Path:
    """The models folder, re-reading ``SBT_MODELS_DIR`` (tests may set it late)."""
    env = os.environ.get("SBT_MODELS_DIR")
    return Path(env) if env else MODELS_DIR


def default_model(n_numbers: int = 4) -> str:
    """The shipped model for puzzles with ``n_numbers`` inputs."""
    return "countdown3-backtrack" if n_numbers == 3 else "countdown4-backtrack"


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """The directory of a model given by name (in ``models/``) or by path.

    Raises ``SbtError`` (one line) when it does not exist or is not a complete model
    directory (config, weights and tokenizer).
    """
    text = str(name_or_path)
    candidates = _candidates(text)
    path = next((p for p in candidates if p.is_dir()), None)
    if path is None:
        if any(p.exists() for p in candidates):
            raise SbtError(f"model {text!r} is not a directory")
        where = f" (looked in {models_dir()})" if len(candidates) > 1 else ""
        raise SbtError(f"model {text!r} not found{where}; train one with `sbt train` or pass --model DIR")
    check_model_dir(path)
    return path.resolve()


def _candidates(text: str) -> list[Path]:
    """Where a model called ``text`` may live: ``models/<text>`` first for a bare name, then
    ``text`` as a path."""
    path = Path(text).expanduser()
    return [models_dir() / text, path] if os.sep not in text and "/" not in text else [path]


def check_model_dir(path: Path) -> None:
    """Raise ``SbtError`` unless ``path`` has a readable config, weights and a tokenizer."""
    config = path / "config.json"
    if not config.is_file():
        raise SbtError(f"model directory {path} has no config.json")
    try:
        json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise SbtError(f"model directory {path}: config.json is unreadable ({exc})") from None
    if not weight_files(path):
        raise SbtError(f"model directory {path} has no weights (*.safetensors or pytorch_model.bin)")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise SbtError(f"model directory {path} has no tokenizer (tokenizer.json)")


def weight_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.safetensors"))
    return files or sorted(path.glob("pytorch_model*.bin"))


def files_sha256(files) -> str:
    """sha256 over the bytes of ``files`` in order, as hex."""
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def model_sha256(path: str | os.PathLike) -> str:
    """sha256 over the weight files (sorted by name), as hex; identifies a checkpoint."""
    return files_sha256(weight_files(Path(path)))


SEARCH_DEFAULTS_FILE = "search_defaults.json"
SEARCH_DEFAULT_KEYS = {"temperature": float, "top_k": int}  # sampling settings; budgets (n, b) stay explicit


def model_dir_of(name_or_path: str | os.PathLike) -> Path:
    """The directory a model name, directory or ``.gguf`` file stands for (not checked)."""
    candidates = _candidates(str(name_or_path))
    path = next((p for p in candidates if p.is_dir()), candidates[-1])
    return path.parent if path.is_file() else path


def search_defaults(name_or_path: str | os.PathLike | None, n_numbers: int = 4) -> dict:
    """The sampling settings a model recommends for search, e.g. ``{"temperature": 1.0}``.

    Read from ``search_defaults.json`` in the model directory (the model card says how
    they were chosen: on val, never on test); ``{}`` when the model has none. They sit
    between a method's own defaults and what the user passes. Other keys of the file
    (``chosen_on``, notes) are documentation.
    """
    path = model_dir_of(name_or_path or default_model(n_numbers)) / SEARCH_DEFAULTS_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        out = {k: cast(raw[k]) for k, cast in SEARCH_DEFAULT_KEYS.items() if k in raw}
    except (OSError, ValueError, TypeError) as exc:
        raise SbtError(f"{path} is unreadable ({exc})") from None
    if out.get("temperature", 0) < 0 or out.get("top_k", 0) < 0:
        raise SbtError(f"{path}: temperature and top_k must not be negative")
    return out
