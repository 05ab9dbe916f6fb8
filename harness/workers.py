"""Local worker processes (``--workers K``) and torchrun ranks for ``sbt bench`` and ``sbt harvest``.

The command (the parent, or rank 0 of a torchrun job) plans the work and is the only
writer of its output: the results store and the paths file keep one writer, and a row
is written as today, the moment it comes back. Workers only compute.

``WorkerPool(size)``: up to ``size`` worker processes, started with ``spawn`` and dying
with the command (``sbt_core.children``). A worker opens a model once, through
``sbt_core.backends.load_backend`` as the serial path does (on one inference thread unless
``--threads`` / ``SBT_NUM_THREADS`` / ``OMP_NUM_THREADS`` say otherwise: a small model runs
fastest on one thread per process), and runs one task at a time: ``run`` hands each task
to the next free worker (puzzles differ in cost) and yields its result as it finishes.
``open`` opens the model in the workers and returns what a run's identity needs
(``ModelInfo``), so the parent never loads the model.

``Ranks``: this process's place in a torchrun job (``settings.distributed``). Ranks join a
gloo process group; ``run_tasks`` deals the tasks (task p to rank p % W) in rounds and
sends each round's results to rank 0, which writes them: the output stays a local file
of rank 0's machine. ``agreed`` gives every rank the plan that rank 0 made (what is left
to do), or rank 0's error.

A task is ``fn(backend, *args)``, ``fn`` a module-level function (workers import it by
name), ``backend`` the model opened for ``key`` = ``(model, backend name, n_numbers)``
(None: no model). Whichever process runs it, a task computes the same result: its seed
comes with it (``harness.runner.derive_seed``, ``harness.harvest``'s batch seed).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable, Iterable, Iterator, Sequence

from sbt_core import settings
from sbt_core.children import die_with_parent, signals_held
from sbt_core.errors import SbtError
from sbt_core.limits import MAX_WORKERS, check_range

ROUND_TASKS = 2  # torchrun: tasks per local worker per rank in one round (then rank 0 writes them)
STOP_S = 5.0  # how long a worker may take to exit before it is killed


def check_workers(workers: int) -> int:
    """``--workers``: a whole number in 1..MAX_WORKERS, else one ``SbtError`` line."""
    return int(check_range(workers, "--workers", 1, MAX_WORKERS, integer=True))


class WorkerDied(SbtError):
    """A worker process ended without a word (killed: out of memory, a signal)."""

    exit_code = 1


@dataclass(frozen=True)
class ModelInfo:
    """What a run's identity and record need of an opened backend (``harness.runner.run_fields``,
    the harvest record); a worker sends it back, so that the parent loads no model."""

    backend_name: str | None
    model_name: str | None
    model_sha256: str | None
    quant: str | None
    options: Any  # the backend's resolved BackendOptions (None if it has none)

    @classmethod
    def of(cls, backend) -> "ModelInfo":
        return cls(getattr(backend, "backend_name", None), getattr(backend, "model_name", None),
                   getattr(backend, "model_sha256", None), getattr(backend, "quant", None),
                   getattr(backend, "options", None))


def model_info(backend) -> ModelInfo:
    """A task: the ``ModelInfo`` of the opened model."""
    return ModelInfo.of(backend)


def worker_options(options: settings.BackendOptions | None) -> settings.BackendOptions:
    """The backend options of a worker: ``options`` (None: from the environment), on one
    thread unless a thread count was given (threads change only the speed, not a run)."""
    options = options or settings.BackendOptions.from_env()
    return options if options.threads else options.override(threads=1)


# --------------------------------------------------------------------------- worker side


def _serve(conn, parent: int, loader: Callable[..., Any] | None, options) -> None:
    """A worker's life: open models as tasks ask for them, run tasks, send back results."""
    die_with_parent(parent)
    settings.passive_openmp()
    if loader is None:
        from sbt_core.backends import load_backend as loader
    opened: dict = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        tag, key, fn, args = msg
        try:
            backend = None
            if key is not None:
                if key not in opened:
                    opened[key] = loader(*key, options=options)
                backend = opened[key]
            reply = ("ok", tag, fn(backend, *args))
        except Exception as exc:
            reply = ("error", tag, _error_info(exc))
        try:
            conn.send(reply)
        except (BrokenPipeError, EOFError):
            return
        except Exception as exc:  # a result that does not pickle
            conn.send(("error", tag, _error_info(exc)))


def _error_info(exc: BaseException) -> dict:
    if settings.debug():
        traceback.print_exc()
    return {"type": type(exc).__name__, "message": str(exc),
            "exit_code": exc.exit_code if isinstance(exc, SbtError) else None}


def _raise(info: dict) -> None:
    if info["exit_code"] is not None:  # one line for the user, as in the serial path
        err = SbtError(info["message"])
        err.exit_code = info["exit_code"]
        raise err
    raise RuntimeError(f"in a worker process: {info['type']}: {info['message']}")


# --------------------------------------------------------------------------- the pool


@dataclass
class _Worker:
    proc: Any
    conn: Any
    busy: bool = False


class WorkerPool:
    """Up to ``size`` worker processes (see the module doc); a context manager that stops
    them on exit (at once, killing a task in flight, when the block raised).

    ``loader(model, backend, n_numbers, options=)`` opens a model in a worker (default:
    ``sbt_core.backends.load_backend``; a module-level function); ``options``: the
    command's ``BackendOptions`` (None: from the environment)."""

    def __init__(self, size: int, loader: Callable[..., Any] | None = None,
                 options: settings.BackendOptions | None = None) -> None:
        self.size = check_workers(size)
        self._loader = loader
        self._options = worker_options(options)
        self._workers: list[_Worker] = []

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, exc_type, *_exc) -> None:
        self.close(clean=exc_type is None)

    def _grow(self, count: int) -> None:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no lock, no output, no threads
        while len(self._workers) < min(count, self.size):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(theirs, os.getpid(), self._loader, self._options),
                               name=f"sbt-worker-{len(self._workers) + 1}", daemon=True)
            # the worker starts with Ctrl-C and SIGTERM blocked (a signal mask survives exec),
            # so that a signal meant for the command never stops a worker half-way through
            # its start-up with a traceback; die_with_parent ignores SIGINT, then unblocks
            try:
                with signals_held():
                    proc.start()
            finally:
                theirs.close()
            self._workers.append(_Worker(proc, mine))

    def open(self, key: tuple) -> ModelInfo:
        """Open the model ``key`` = (model, backend, n_numbers) in every worker started (the
        first one if none is) and return its ``ModelInfo``; a load error is one ``SbtError``
        line, as in the serial path."""
        self._grow(1)
        infos = [info for _, info in self.run(key, model_info, [(w, ()) for w in range(len(self._workers))],
                                              spread=True)]
        return infos[0]

    def run(self, key: tuple | None, fn: Callable[..., Any], tasks: Iterable[tuple[Any, tuple]],
            count: int | None = None, spread: bool = False) -> Iterator[tuple[Any, Any]]:
        """``(tag, fn(backend, *args))`` of every ``(tag, args)`` of ``tasks``, as the workers
        finish them; a task goes to the next free worker, so at most one is in flight per
        worker (``tasks`` is read lazily: a task is made when a worker is free). ``count``:
        how many tasks there are, if known (no more workers are started than that). A
        worker's error is raised here; so is ``WorkerDied``. ``spread``: task k goes to
        worker k (one task per worker started)."""
        if count == 0:
            return
        if not spread:
            self._grow(self.size if count is None else count)
        pending = iter(tasks)
        free = list(range(len(self._workers)))[::-1]
        busy: dict[int, Any] = {}
        finished = False
        try:
            more = True
            while True:
                while more and free:
                    try:
                        tag, args = next(pending)
                    except StopIteration:
                        more = False
                        break
                    w = tag if spread else free.pop()
                    if spread:
                        free.remove(w)
                    self._send(w, (tag, key, fn, args))
                    busy[w] = tag
                if not busy:
                    finished = True
                    return
                for w, reply in self._replies(list(busy)):
                    kind, tag, value = reply
                    del busy[w]
                    self._workers[w].busy = False
                    free.append(w)
                    if kind == "error":
                        _raise(value)
                    yield tag, value
        finally:
            if not finished:  # an error, a signal, or a caller that stopped reading: tasks may be in flight
                self.close(clean=False)

    def _send(self, w: int, msg: tuple) -> None:
        worker = self._workers[w]
        try:
            worker.conn.send(msg)
        except (BrokenPipeError, OSError):
            raise self._died(worker) from None
        worker.busy = True

    def _replies(self, busy: Sequence[int]) -> Iterator[tuple[int, tuple]]:
        """The replies of the workers ``busy`` that are ready (waits for one at least)."""
        conns = {self._workers[w].conn: w for w in busy}
        ends = {self._workers[w].proc.sentinel: w for w in busy}
        ready = wait([*conns, *ends])
        got = set()
        for obj in ready:
            w = conns.get(obj)
            if w is None:
                continue
            try:
                reply = obj.recv()
            except (EOFError, OSError):
                raise self._died(self._workers[w]) from None
            got.add(w)
            yield w, reply
        for obj in ready:
            w = ends.get(obj)
            if w is not None and w not in got and not self._workers[w].conn.poll():
                raise self._died(self._workers[w])

    def _died(self, worker: _Worker) -> WorkerDied:
        worker.proc.join(STOP_S)
        code = worker.proc.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return WorkerDied(f"worker process {worker.proc.pid} ended unexpectedly ({how}; out of memory?); what was "
                          "written so far is kept: re-run the same command to continue")

    def close(self, clean: bool = True) -> None:
        """Stop every worker: ``clean``: ask each to exit (none has a task in flight); else
        terminate them at once. None is left running either way."""
        workers, self._workers = self._workers, []
        for w in workers:
            if clean and not w.busy and w.proc.is_alive():
                with contextlib.suppress(OSError, ValueError):
                    w.conn.send(None)
            else:
                with contextlib.suppress(OSError, ValueError):
                    w.proc.terminate()
        for w in workers:
            w.proc.join(STOP_S if clean else 1.0)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
            w.conn.close()


# --------------------------------------------------------------------------- torchrun


@dataclass
class Ranks:
    """This process's place in a torchrun job: ``rank`` of ``world`` (``LOCAL_RANK``: on its
    machine). ``start`` joins the job's gloo process group."""

    rank: int
    world: int
    local_rank: int = 0
    _dist: Any = None

    @classmethod
    def from_env(cls) -> "Ranks | None":
        """The ranks of a torchrun job (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); None when
        not started by torchrun or alone in its job (``WORLD_SIZE`` 1)."""
        found = settings.distributed()
        return cls(*found) if found is not None and found[1] > 1 else None

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def check_size(self, units: int, what: str) -> None:
        """One line when the job has more ranks than ``units`` of work (``what``: their
        name, singular): a rank would have nothing to do."""
        if self.world > units:
            raise SbtError(f"torchrun started {self.world} processes (WORLD_SIZE) for {units:,} {what}"
                           f"{'' if units == 1 else 's'}; start at most {units:,}")

    def start(self, device: str | None = None) -> None:
        """Join the gloo process group (torchrun's MASTER_ADDR / MASTER_PORT); with a torch
        ``device`` of cuda or auto, each rank takes the GPU of its ``LOCAL_RANK``."""
        import torch
        import torch.distributed as dist

        if not dist.is_available():
            raise SbtError("this torch build has no torch.distributed; run without torchrun (or use --workers)")
        try:
            dist.init_process_group("gloo", rank=self.rank, world_size=self.world)
        except (ValueError, RuntimeError) as exc:
            raise SbtError(f"cannot join the torchrun job: {' '.join(str(exc).split())}") from None
        self._dist = dist
        if device in ("cuda", "auto") and torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank % torch.cuda.device_count())

    def close(self) -> None:
        if self._dist is not None and self._dist.is_initialized():
            with contextlib.suppress(Exception):
                self._dist.destroy_process_group()
        self._dist = None

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's ``obj``, on every rank."""
        box = [obj if self.rank == 0 else None]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list | None:
        """Every rank's ``obj`` (a list in rank order) on rank 0; None on the others."""
        out = [None] * self.world if self.rank == 0 else None
        self._dist.gather_object(obj, out, dst=0)
        return out

    def check_same(self, value: Any, what: str) -> None:
        """``SbtError`` on every rank unless every rank has the same ``value`` (its ``what``)."""
        got = self.gather(value)
        odd = next((r for r, v in enumerate(got) if v != got[0]), None) if got is not None else None
        odd = self.broadcast(odd)
        if odd is not None:
            raise SbtError(f"torchrun rank {odd} has another {what} than rank 0; every rank must read the same "
                           "model and puzzles")


def agreed(ranks: Ranks | None, plan: Callable[[], Any]) -> Any:
    """``plan()`` made on rank 0 only (it reads and writes the output) and its value given
    to every rank; rank 0's error is raised on every rank (one line each, not a hang)."""
    if ranks is None:
        return plan()
    if ranks.writer:
        try:
            value = plan()
        except Exception as exc:
            ranks.broadcast(("error", _error_info(exc)))
            raise
        ranks.broadcast(("ok", value))
        return value
    kind, value = ranks.broadcast()
    if kind == "error":
        _raise(value)
    return value


def run_tasks(fn: Callable[..., Any], tasks: Iterable[tuple[Any, tuple]], *, key: tuple | None = None,
              pool: WorkerPool | None = None, backend: Any = None, ranks: Ranks | None = None,
              count: int | None = None) -> Iterator[tuple[Any, Any]]:
    """``(tag, fn(backend, *args))`` of the tasks ``(tag, args)``: in ``pool`` (as its workers
    finish them) or here with ``backend`` (in order).

    With ``ranks`` (every rank calls it with the same task list): task p is rank p % W's;
    in round j each rank does its next ROUND_TASKS tasks per local worker, then rank 0
    gets every rank's results and yields them in task order; the other ranks yield nothing.
    So each round's results are a contiguous stretch of the task list."""

    def here(part: Iterable[tuple[Any, tuple]], n: int | None) -> Iterator[tuple[Any, Any]]:
        if pool is not None:
            yield from pool.run(key, fn, part, count=n)
        else:
            for tag, args in part:
                yield tag, fn(backend, *args)

    if ranks is None:
        yield from here(tasks, count)
        return
    tasks = list(tasks)
    share = tasks[ranks.rank::ranks.world]
    per_round = ROUND_TASKS * (pool.size if pool is not None else 1)
    longest = -(-len(tasks) // ranks.world)
    for j in range(-(-longest // per_round)):
        mine = share[j * per_round:(j + 1) * per_round]
        done = dict(here(mine, len(mine)))
        got = ranks.gather([(tag, done[tag]) for tag, _ in mine])
        if got is not None:
            # rank r's k-th result of the round is task (j * per_round + k) * W + r: interleave back
            for k in range(per_round):
                for part in got:
                    if k < len(part):
                        yield part[k]
