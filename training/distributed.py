"""Data-parallel training under ``torchrun`` (or ``accelerate launch``): the device, the
process group, and the one-line agreement of the ranks on what went wrong.

``sbt train`` started by ``torchrun --nproc_per_node K`` (``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK``, read by ``sbt_core.settings.distributed``) trains one model with K
processes: every rank walks the same sequence of global batches (``training.batches``:
the order depends on the seed and the step only), takes the examples at places r, r + K,
... of each, and the model is wrapped in ``DistributedDataParallel`` (gloo on CPU, nccl on
CUDA), which averages the gradients. Each rank's loss is its sum of token losses divided by
the trained tokens of the whole global batch (times K, which DDP's average divides out), so
a step is the step one process would take on the whole batch, up to float rounding.

Rank 0 alone takes the lock of ``--out``, builds (and caches) the data set, evaluates and
writes checkpoints, logs and the model; a checkpoint holds nothing of the ranks, so
``--resume`` may use another number of processes. Without torchrun (or with one process)
nothing of this is used: the single-process path is the one it always was.

This module imports torch only inside functions: ``check_world`` runs before torch loads.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sbt_core import settings
from sbt_core.errors import SbtError

# how long a rank waits for the others at a collective (rank 0 alone builds the data set,
# evaluates and writes checkpoints meanwhile; a 1B model's optimizer state is GBs)
TIMEOUT = datetime.timedelta(hours=2)


class LostRanks(SbtError):
    """A collective failed: another rank stopped (an error there, a kill, Ctrl-C)."""

    exit_code = 1


def world() -> tuple[int, int, int] | None:
    """``(rank, world, local_rank)`` of a torchrun job of 2 or more processes; None for one
    process (no torchrun, or ``--nproc_per_node 1``)."""
    found = settings.distributed()
    return found if found is not None and found[1] > 1 else None


def is_writer() -> bool:
    """Whether this process writes the outputs (rank 0, or the only process)."""
    found = world()
    return found is None or found[0] == 0


def check_world(batch_size: int, device: str | None = None) -> None:
    """One line (``SbtError``) for a torchrun job that cannot train data-parallel with these
    settings: the global batch must split evenly among the ranks, and each rank takes the GPU
    of its ``LOCAL_RANK`` (so neither ``--device cuda:N`` nor ``mps``). No torch needed."""
    found = world()
    if found is None:
        return
    _, size, _ = found
    if batch_size % size:
        raise SbtError(f"--batch-size {batch_size} does not split among the {size} processes torchrun started "
                       f"(WORLD_SIZE): it is the global batch and must be a multiple of {size}")
    if device and device.startswith("cuda:"):
        raise SbtError(f"--device {device}: under torchrun each process takes the GPU of its LOCAL_RANK; "
                       "use --device cuda (or auto)")
    if device == "mps":
        raise SbtError("--device mps cannot train data-parallel (no process group backend for it); run one "
                       "process, without torchrun")


def resolve_device(choice: str | None, local_rank: int | None = None):
    """``--device`` as a torch device. ``auto`` (or None): cuda when torch sees one, else cpu
    (the device ``sbt train`` always used); under torchrun (``local_rank`` given) cuda is the
    GPU of this rank's ``LOCAL_RANK``. One line when the device is not here."""
    import torch

    choice = choice or "auto"
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    kind = choice.split(":")[0]
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise SbtError(f"--device {choice}: torch sees no CUDA device here; use --device cpu (or auto)")
        count = torch.cuda.device_count()
        index = int(choice.split(":")[1]) if ":" in choice else None
        if local_rank is not None:
            if local_rank >= count:
                raise SbtError(f"torchrun started more processes on this machine than it has GPUs ({count}): "
                               f"LOCAL_RANK {local_rank} has none; use --nproc_per_node {count} or fewer")
            index = local_rank
        if index is not None and index >= count:
            raise SbtError(f"--device {choice}: torch sees {count} CUDA device{'s' if count != 1 else ''} here "
                           f"(cuda:0 to cuda:{count - 1})")
        return torch.device("cuda", index) if index is not None else torch.device("cuda")
    if kind == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise SbtError("--device mps: torch sees no MPS device here; use --device cpu (or auto)")
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class Group:
    """This process's place in a data-parallel training job, after ``start``."""

    rank: int
    world: int
    local_rank: int
    device: Any
    owned: bool = True  # the group was made here (and is destroyed by ``close``)
    control: Any = None  # a gloo group for objects (the default group is nccl on CUDA)

    @property
    def writer(self) -> bool:
        return self.rank == 0

    # ----------------------------------------------------------------------- collectives

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's ``obj``, on every rank."""
        import torch.distributed as dist

        box = [obj if self.writer else None]
        with self.guard():
            dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def gather(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        import torch.distributed as dist

        out: list = [None] * self.world
        with self.guard():
            dist.all_gather_object(out, obj, group=self.control)
        return out

    def agree(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0 only; its error (one line) is raised on every rank, so that no
        rank waits for a rank 0 that has stopped. Returns ``fn()``'s value on rank 0."""
        if self.writer:
            try:
                value = fn()
            except SbtError as exc:
                self.broadcast(("error", str(exc), exc.exit_code))
                raise
            except Exception as exc:  # (an interrupt is every rank's own: torchrun passes it on)
                with contextlib.suppress(Exception):  # (the original error is the one to show here)
                    self.broadcast(("error", f"rank 0 stopped: {type(exc).__name__}: {exc}", 1))
                raise
            self.broadcast(("ok", None, 0))
            return value
        kind, message, code = self.broadcast()
        if kind == "error":
            raise _error(message, code)
        return None

    def each(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on every rank; when it fails on any rank, every rank raises the error of
        the first rank it failed on (one line each, not a hang)."""
        try:
            value, failed = fn(), None
        except SbtError as exc:
            value, failed = None, (str(exc), exc.exit_code)
        got = self.gather(failed)
        first = next(((r, f) for r, f in enumerate(got) if f is not None), None)
        if first is not None:
            r, (message, code) = first
            raise _error(message if r == self.rank else f"rank {r}: {message}", code)
        return value

    def check_same(self, value: Any, what: str) -> None:
        got = self.gather(value)
        odd = next((r for r, v in enumerate(got) if v != got[0]), None)
        if odd is not None:
            raise SbtError(f"torchrun rank {odd} has another {what} than rank 0; every rank must read the same files "
                           "(a shared --out and data folder)")

    def sum(self, tensor) -> None:
        """``tensor`` summed over the ranks, in place (the default group: nccl on CUDA)."""
        import torch.distributed as dist

        with self.guard():
            dist.all_reduce(tensor)

    def wrap(self, module):
        """``module`` in ``DistributedDataParallel`` (gradients averaged over the ranks)."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    @contextlib.contextmanager
    def guard(self):
        """A failed collective (a rank that stopped: killed, interrupted, an error there) is
        one line here, not a traceback from the process group."""
        try:
            yield
        except RuntimeError as exc:
            if not _is_comm_error(exc):
                raise
            first = (str(exc).strip().splitlines() or [""])[0]
            raise LostRanks(f"torchrun rank {self.rank}: lost the other ranks (another rank stopped; see its "
                            f"message): {first[:160]}") from None

    def close(self) -> None:
        import torch.distributed as dist

        if self.owned and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


def _error(message: str, code: int) -> SbtError:
    err = SbtError(message)
    err.exit_code = code
    return err


def _is_comm_error(exc: BaseException) -> bool:
    import torch.distributed as dist

    backend_error = getattr(dist, "DistBackendError", None)
    if backend_error is not None and isinstance(exc, backend_error):
        return True
    text = str(exc)
    return any(s in text for s in ("gloo", "Connection closed by peer", "Connection reset by peer", "NCCL",
                                   "Socket Timeout", "Broken pipe"))


def start(device: str | None) -> tuple[Any, Group | None]:
    """The torch device of this process and, under a torchrun job of 2 or more processes,
    its ``Group`` (the process group joined: nccl on CUDA, else gloo). A job of one process,
    or none, gets ``(device, None)``: the single-process path, unchanged."""
    found = world()
    if found is None:
        return resolve_device(device), None
    rank, size, local = found
    dev = resolve_device(device, local)
    if dev.type not in ("cpu", "cuda"):
        raise SbtError(f"--device {dev.type} cannot train data-parallel; run one process, without torchrun")
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise SbtError("this torch build has no torch.distributed; run sbt train without torchrun")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owned = not dist.is_initialized()
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if owned:
        try:
            dist.init_process_group(backend, rank=rank, world_size=size, timeout=TIMEOUT,
                                    **({"device_id": dev} if dev.type == "cuda" else {}))
        except (ValueError, RuntimeError) as exc:
            raise SbtError(f"cannot join the torchrun job: {' '.join(str(exc).split())[:300]}") from None
    elif dist.get_world_size() != size:
        raise SbtError(f"a process group of {dist.get_world_size()} processes is already open here, not "
                       f"WORLD_SIZE {size}")
    control = dist.new_group(backend="gloo", timeout=TIMEOUT) if dist.get_backend() != "gloo" else None
    return dev, Group(rank, size, local, dev, owned, control)


def dataset_digest(data) -> str:
    """A fingerprint of an ``EncodedDataset`` (every rank must train on the same data)."""
    h = hashlib.sha256()
    for t in (data.offsets, data.ids, data.labels):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def interrupts_as_keyboard(group: Group | None):
    """In a data-parallel run, SIGTERM (torchrun forwards it to every rank when it is stopped)
    becomes ``KeyboardInterrupt``, as Ctrl-C: the rank ends with exit code 130, without a
    traceback, and the checkpoint on disk stays whole (it is written atomically). One process:
    nothing changes."""
    if group is None:
        yield
        return

    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, raise_interrupt)
    except ValueError:  # not the main thread: leave the signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
