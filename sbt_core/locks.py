"""Exclusive locks on the outputs a command owns (``--out`` of train, harvest, data generate,
export, iterate), so that two processes never write one output.

``output_lock(path)`` takes an ``flock`` on a lock file beside (for a file) or inside (for a
folder) the output, writes the holder's pid into it, and gives it back when the block ends.
The OS releases it when the process dies (kill -9 included), so a stale lock file never
blocks anyone. A second process gets ``OutputBusyError`` (one line naming the holder's pid,
exit 2) at once instead of waiting. Locks are per open file description: two locks on one
output conflict within a process too, and worker processes started with ``spawn`` do not
inherit them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from .errors import SbtError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locking
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".sbt.lock"  # inside a folder output


class OutputBusyError(SbtError):
    """Another process holds the output's lock."""


def lock_file_for(path: Path | str, is_dir: bool) -> Path:
    """The lock file of an output: ``DIR/.sbt.lock`` for a folder, ``FILE.lock`` beside a file."""
    path = Path(path)
    return path / LOCK_NAME if is_dir else path.with_name(path.name + ".lock")


@contextlib.contextmanager
def output_lock(path: Path | str, *, is_dir: bool, what: str = "output") -> Iterator[Path]:
    """Hold the exclusive lock of the output ``path`` for the block (see the module doc).

    The folder of the lock file is created if needed. Raises ``OutputBusyError`` when
    another process (or another open lock in this one) holds it.
    """
    lock = lock_file_for(path, is_dir)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SbtError(f"cannot create {lock.parent}: {exc.strerror or exc}") from None
    if fcntl is None:  # pragma: no cover
        yield lock
        return
    fd = _acquire(lock, path, what)
    try:
        yield lock
    finally:
        _release(lock, fd)


def _acquire(lock: Path, path: Path | str, what: str) -> int:
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SbtError(f"cannot lock {path}: {exc.strerror or exc} ({lock})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise OutputBusyError(f"{what} {path} is in use by another sbt process ({who}); wait for it to "
                                  "finish or choose another output") from None
        # the holder before us may have removed the file after we opened it: lock the file
        # that is there now, else two processes could each hold a lock on a different inode
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


def _release(lock: Path, fd: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(lock)  # while still held: nobody can be holding the file we remove
    os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
