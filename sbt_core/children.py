"""Worker processes that never outlive the command that started them.

``die_with_parent(parent)`` runs first in every worker process (a pool's initializer, or the
first call of a process target): Ctrl-C is the parent's to handle (a terminal sends SIGINT
to the whole process group; the parent stops its workers itself), and the worker dies with
its parent: at once on Linux (PR_SET_PDEATHSIG), else within ``WATCH_PARENT_S`` (a thread
that sees the parent pid change). Workers are started with ``spawn``: a fresh interpreter
that inherits no lock, no open output and no thread state from the command.

Used by ``sbt data generate --workers`` (``sbt_core.generate``) and ``sbt bench`` /
``sbt harvest --workers`` (``harness.workers``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

WATCH_PARENT_S = 0.5  # how often a worker checks that the command that started it still runs


def die_with_parent(parent: int) -> None:
    """Make this worker process ignore SIGINT and die with ``parent`` (its parent's pid,
    passed from the parent: if it is already gone, the worker exits at once). SIGINT and
    SIGTERM are unblocked (``harness.workers`` starts a worker with them blocked, so that
    a signal during its start-up waits until here: a SIGTERM from the parent then ends it,
    a Ctrl-C is dropped)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # a parent may start its workers with signals blocked
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="sbt-watch-parent", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_PARENT_S)
    os._exit(1)


@contextlib.contextmanager
def signals_held():
    """Hold Ctrl-C and SIGTERM for the block (they are delivered when it ends): around the
    start of worker processes, so that a signal never interrupts the parent half-way through
    handing a spawned worker its start-up data (the worker would die with an ``EOFError``
    traceback on the terminal). A thread started inside the block (a pool's manager thread)
    inherits the held mask, so the signals keep going to the main thread."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
