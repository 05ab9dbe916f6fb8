"""Writing what a user is handed: atomically, as strict JSON, never half a file.

``write_atomic(path, data)`` writes into a temporary file in the same folder (so the rename
cannot cross file systems) and renames it over ``path`` only when it is complete: a kill
at any moment leaves the old file or the new one, never a mix. ``strict_json`` writes JSON
that every parser reads (non-finite floats become ``null``, never ``NaN``/``Infinity``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

from .errors import SbtError

Data = Union[str, bytes, Callable[[Path], None]]


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (tuples become lists)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def strict_json(obj: Any, **kwargs) -> str:
    """Strict JSON of ``obj`` (see ``json_safe``)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def read_json_object(file: str | os.PathLike, where: str) -> dict:
    """The JSON object in ``file``; ``SbtError`` (one line, ``where: NAME is ...``) when it is
    unreadable, not JSON or not an object."""
    file = Path(file)
    try:
        obj = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        text = str(exc)
        raise SbtError(f"{where}: {file.name} is unreadable ({text if len(text) <= 120 else text[:117] + '...'})") from None
    if not isinstance(obj, dict):
        raise SbtError(f"{where}: {file.name} is not a JSON object")
    return obj


def write_atomic(path: str | os.PathLike, data: Data, what: str = "--out", fsync: bool = False) -> Path:
    """Write ``data`` (text, bytes, or ``data(tmp_path)`` that writes the file itself) to
    ``path`` atomically, creating its folder; an old file there stays until the new one is
    complete and the temporary file never outlives a failure. An ``OSError`` is one
    ``SbtError`` naming ``what`` and ``path`` (never the temporary file). ``fsync``: the
    bytes reach the disk before the rename (checkpoints)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        if callable(data):
            os.close(fd)
            data(tmp)
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data.encode() if isinstance(data, str) else data)
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        mask = os.umask(0)  # mkstemp makes 0600 files: give the new file the usual mode
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise SbtError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | os.PathLike, obj: Any, what: str = "file", fsync: bool = False, indent: int = 1) -> Path:
    """``obj`` as strict JSON (and a final newline) into ``path``, atomically."""
    return write_atomic(path, strict_json(obj, indent=indent) + "\n", what=what, fsync=fsync)
