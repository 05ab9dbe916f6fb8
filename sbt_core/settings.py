"""sbt's settings from the process environment: the one module that reads it.

Front ends parse flags once at the edge (``sbt solve --dtype bfloat16``) into a
``BackendOptions`` and hand it down; the environment is only the documented fallback (a
flag wins over its variable, a variable over the default). Nothing else in sbt reads
``os.environ``, and every value is read when asked for (not at import), so a test or a
wrapper may set a variable late.

========================  ===========  ==================================================
variable                  flag         meaning (default)
========================  ===========  ==================================================
``SBT_DTYPE``             --dtype      torch weights and activations: float32 | bfloat16
                                       (float32)
``SBT_DEVICE``            --device     torch device: cpu | cuda | cuda:N | mps | auto
                                       (cpu; auto: cuda when there is one; ``sbt train``:
                                       auto)
``SBT_TORCH_IMPL``        (none)       torch model code: auto | compact | transformers
                                       (auto: the compact Llama where it applies)
``SBT_NUM_THREADS``       --threads    inference threads of both backends (1 for models
                                       under 50M parameters, else the library's default);
                                       0: the default
``OMP_NUM_THREADS``       (none)       OpenMP's own: the thread fallback when
                                       ``SBT_NUM_THREADS`` is not set (ignored unless a
                                       positive whole number)
``SBT_LLAMA_QUANT``       --quant      llama: which GGUF of a model directory (q8_0, then
                                       f16, f32, q4_k_m, q4_0)
``SBT_LLAMA_SEQS``        (none)       llama: sequences decoded together (32)
``SBT_LLAMA_SLOTS``       (none)       llama: cached prompt prefixes (16); seqs + slots
                                       at most 256
``SBT_LLAMA_KV_UNIFIED``  (none)       llama: 0 = one KV stream per sequence (1: one
                                       unified cache)
``SBT_LLAMA_FLASH_ATTN``  (none)       llama: 0 | 1 (on, off for an f32 GGUF)
``SBT_LLAMA_VERBOSE``     (none)       llama: 1 shows llama.cpp's log (off)
``SBT_MODELS_DIR``        (none)       the folder of named models (models/ in the repo)
``SBT_DB``                --db         the results database (results.db in the repo)
``SBT_DEBUG``             (none)       1: a traceback for internal errors (off)
``OMP_WAIT_POLICY``       (none)       set to PASSIVE before torch loads, unless set
``COLUMNS``               (none)       set: tables take the terminal's width from it
``RANK``, ``WORLD_SIZE``  (none)       set by torchrun (with ``LOCAL_RANK``): ``sbt
                                       bench`` and ``sbt harvest`` share their puzzles
                                       among the ranks, ``sbt train`` trains data-parallel
                                       (unset: one process)
========================  ===========  ==================================================

A run's identity in results.db includes ``BackendOptions.identity(backend)``: the options
that change what a run computes, defaults left out, so a run with default options keeps
the identity it always had (see ``harness.store.run_key``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from .errors import SbtError
from .limits import MAX_THREADS

DTYPE_ALIASES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}
TORCH_IMPLS = ("auto", "compact", "transformers")
DEVICE_PATTERN = re.compile(r"(cpu|auto|mps|cuda(:\d{1,3})?)")
QUANT_PATTERN = re.compile(r"[a-z0-9_]{1,32}")
LLAMA_MAX_SEQUENCES = 256  # prompt slots + sample sequences of one llama.cpp context
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")

# BackendOptions field -> (environment variable, flag or None)
SOURCES = {
    "dtype": ("SBT_DTYPE", "--dtype"),
    "device": ("SBT_DEVICE", "--device"),
    "threads": ("SBT_NUM_THREADS", "--threads"),
    "torch_impl": ("SBT_TORCH_IMPL", None),
    "quant": ("SBT_LLAMA_QUANT", "--quant"),
    "seqs": ("SBT_LLAMA_SEQS", None),
    "slots": ("SBT_LLAMA_SLOTS", None),
    "kv_unified": ("SBT_LLAMA_KV_UNIFIED", None),
    "flash_attn": ("SBT_LLAMA_FLASH_ATTN", None),
}
# the options each backend takes; ``identity`` keeps those that change what it computes
# (threads change only the speed, quant picks the GGUF whose sha256 is already the model's)
BACKEND_FIELDS = {
    "torch": ("dtype", "device", "threads", "torch_impl"),
    "llama": ("threads", "quant", "seqs", "slots", "kv_unified", "flash_attn"),
}
IDENTITY_FIELDS = {
    "torch": ("dtype", "device", "torch_impl"),
    "llama": ("seqs", "slots", "kv_unified", "flash_attn"),
}
FLAG_HELP = {
    "dtype": "torch: float32 | bfloat16 (default: $SBT_DTYPE, else float32)",
    "device": "torch: cpu | cuda | cuda:N | mps | auto (default: $SBT_DEVICE, else cpu)",
    "threads": "inference threads (default: $SBT_NUM_THREADS, $OMP_NUM_THREADS, else 1 for small models; 0: default)",
    "quant": "llama: the GGUF type to load, e.g. q8_0, f16, f32 (default: $SBT_LLAMA_QUANT, else q8_0, f16, ...)",
}


def env(name: str) -> str | None:
    """The variable's value; None when it is unset or empty."""
    value = os.environ.get(name)
    return value if value else None


# --------------------------------------------------------------------------- plain settings


def db_path() -> Path | None:
    """``SBT_DB``: the results database to use instead of results.db in the repository."""
    value = env("SBT_DB")
    return Path(value) if value else None


def models_dir() -> Path | None:
    """``SBT_MODELS_DIR``: the folder of named models instead of models/ in the repository."""
    value = env("SBT_MODELS_DIR")
    return Path(value) if value else None


def debug() -> bool:
    """``SBT_DEBUG``: show the traceback of an internal error."""
    return env("SBT_DEBUG") is not None


def llama_verbose() -> bool:
    """``SBT_LLAMA_VERBOSE``: print llama.cpp's log to stderr."""
    return env("SBT_LLAMA_VERBOSE") is not None


def columns_set() -> bool:
    """Whether ``COLUMNS`` gives the terminal width (tables then follow it)."""
    return env("COLUMNS") is not None


def distributed() -> tuple[int, int, int] | None:
    """torchrun's ``(RANK, WORLD_SIZE, LOCAL_RANK)`` of this process; None when it was not
    started by torchrun (``RANK`` or ``WORLD_SIZE`` unset). ``LOCAL_RANK`` defaults to 0. A
    value that is not a whole number, or a rank outside the world, is one ``SbtError``."""
    rank, world, local = env("RANK"), env("WORLD_SIZE"), env("LOCAL_RANK") or "0"
    if rank is None or world is None:
        return None
    values = []
    for name, text in (("RANK", rank), ("WORLD_SIZE", world), ("LOCAL_RANK", local)):
        if not text.strip().isdigit():
            raise SbtError(f"{name} must be a whole number (as torchrun sets it), got {text!r}")
        values.append(int(text))
    if not 0 <= values[0] < values[1]:
        raise SbtError(f"RANK must be between 0 and WORLD_SIZE - 1 ({values[1] - 1}), got {values[0]}")
    return values[0], values[1], values[2]


def train_device(flag: str | None = None) -> str:
    """``sbt train --device``: the flag, else ``SBT_DEVICE``, else ``auto`` (cuda when there is
    one: what ``sbt train`` always did); checked (one line for a bad value), not resolved."""
    if flag is not None:
        return _parse("device", flag, "--device")
    value = env("SBT_DEVICE")
    return _parse("device", value, "SBT_DEVICE") if value else "auto"


def passive_openmp() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` unless set: OpenMP threads sleep instead of spinning on a
    busy CPU. Call it before torch is imported (OpenMP reads it once, when it loads)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run_env() -> list[tuple[str, str]]:
    """The variables in effect that change what a bench run computes, as (name, value):
    recorded in front of the run's command line so that it reproduces the run."""
    names = [SOURCES[f][0] for f in ("quant", *IDENTITY_FIELDS["torch"], *IDENTITY_FIELDS["llama"])]
    return [(k, v) for k in dict.fromkeys(names) if (v := env(k))]


# --------------------------------------------------------------------------- backend options


def _parse(name: str, value: Any, source: str) -> Any:
    """``value`` of option ``name`` checked and normalised; ``SbtError`` naming ``source``
    (a flag, a variable or the field) for a bad one."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if name == "dtype":
        if text not in DTYPE_ALIASES:
            raise SbtError(f"unknown {source} {value!r}; choose float32 or bfloat16")
        return DTYPE_ALIASES[text]
    if name == "device":
        if not DEVICE_PATTERN.fullmatch(text):
            raise SbtError(f"unknown {source} {value!r}; choose cpu, cuda, cuda:N, mps or auto")
        return text
    if name == "torch_impl":
        if text not in TORCH_IMPLS:
            raise SbtError(f"unknown {source} {value!r}; choose auto, compact or transformers")
        return text
    if name == "quant":
        if not QUANT_PATTERN.fullmatch(text):
            raise SbtError(f"{source} {value!r}: a GGUF type is a short name such as q8_0, f16 or f32")
        return text
    if name in ("threads", "seqs", "slots"):
        low, high = (0, MAX_THREADS) if name == "threads" else (1, LLAMA_MAX_SEQUENCES - 1)
        try:
            n = int(text) if isinstance(value, str) else value
        except ValueError:
            n = value
        if isinstance(n, bool) or not isinstance(n, int) or not low <= n <= high:
            raise SbtError(f"{source} must be a whole number between {low} and {high}, got {value!r}")
        return n if n or name != "threads" else None  # threads 0: the default
    if name in ("kv_unified", "flash_attn"):
        if isinstance(value, bool):
            return value
        if text in TRUE or text in FALSE:
            return text in TRUE
        raise SbtError(f"{source} must be 0 or 1, got {value!r}")
    raise ValueError(f"unknown backend option {name!r}")  # pragma: no cover - a programming error


def _omp_threads(environ: Mapping[str, str]) -> int | None:
    """``OMP_NUM_THREADS`` as a thread count, when it is one positive whole number (OpenMP
    also takes lists such as ``4,2``: those, and anything else, are left to OpenMP)."""
    value = (environ.get("OMP_NUM_THREADS") or "").strip()
    return int(value) if value.isdigit() and 0 < int(value) <= MAX_THREADS else None


@dataclass(frozen=True)
class BackendOptions:
    """How a model backend runs: parsed once (``from_env``), then passed down.

    ``None`` means "the backend decides": ``threads`` (1 for small models, else the
    library's), ``quant`` (q8_0, then f16, f32, q4_k_m, q4_0), ``flash_attn`` (on, off for
    an f32 GGUF)."""

    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = None
    torch_impl: str = "auto"
    quant: str | None = None
    seqs: int = 32
    slots: int = 16
    kv_unified: bool = True
    flash_attn: bool | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _parse(f.name, getattr(self, f.name), f.name))
        if self.seqs + self.slots > LLAMA_MAX_SEQUENCES:
            seqs, slots = SOURCES["seqs"][0], SOURCES["slots"][0]
            raise SbtError(f"{seqs} + {slots} must be at most {LLAMA_MAX_SEQUENCES}, "
                           f"got {self.seqs} + {self.slots}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **flags: Any) -> "BackendOptions":
        """The options: each from its flag (``flags``, None: not given), else its variable
        (``environ``, default ``os.environ``; empty counts as unset), else the default.
        A bad value is one ``SbtError`` line naming the flag or the variable."""
        unknown = set(flags) - set(SOURCES)
        if unknown:
            raise TypeError(f"unknown backend options: {', '.join(sorted(unknown))}")
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, (var, flag) in SOURCES.items():
            if flags.get(name) is not None:
                values[name] = _parse(name, flags[name], flag or name)
            elif environ.get(var):
                values[name] = _parse(name, environ[var], var)
        if values.get("threads") is None:
            values["threads"] = _omp_threads(environ)
        return cls(**{k: v for k, v in values.items() if v is not None})

    def override(self, **given: Any) -> "BackendOptions":
        """A copy with the given options that are not None (a backend's keyword arguments)."""
        given = {k: v for k, v in given.items() if v is not None}
        return replace(self, **given) if given else self

    def identity(self, backend: str | None = None) -> dict[str, Any]:
        """The options of ``backend`` ("torch", "llama"; None: both) that change what a run
        computes, those at their defaults left out: {} for default options, so such a run
        keeps the identity it had before options were part of it. Any other backend
        (scripted, a test's fake) has none."""
        names = IDENTITY_FIELDS.get(backend, ()) if backend is not None else \
            tuple(dict.fromkeys(IDENTITY_FIELDS["torch"] + IDENTITY_FIELDS["llama"]))
        default = DEFAULT_OPTIONS
        return {k: getattr(self, k) for k in names if getattr(self, k) != getattr(default, k)}

    def check_flags(self, backend: str, **given: Any) -> None:
        """``SbtError`` for a flag given (not None) that ``backend`` does not take
        (``--dtype`` with the llama backend): a flag that would do nothing is refused."""
        takes = BACKEND_FIELDS.get(backend, tuple(SOURCES))
        for name, value in given.items():
            if value is not None and name not in takes:
                flag = SOURCES[name][1] or name
                other = next((b for b, names in BACKEND_FIELDS.items() if name in names), None)
                raise SbtError(f"{flag} is an option of the {other} backend, not of {backend}")


DEFAULT_OPTIONS = BackendOptions()


def backend_options(backend: str | None = None, **flags: Any) -> BackendOptions | None:
    """The CLI edge: options from ``flags`` (None: not given), else the environment, else
    the defaults, checked now (one line for a bad value, or for a flag that ``backend``
    does not take). None when no flag is given: the backend opened with ``options=None``
    reads the same options (``BackendOptions.from_env``)."""
    options = BackendOptions.from_env(**flags)
    if backend is not None:
        options.check_flags(backend, **flags)
    return options if any(v is not None for v in flags.values()) else None


def format_options(identity: Mapping[str, Any] | None) -> str:
    """``dtype=bfloat16 device=cuda``: a run's non-default options for tables ("" if none)."""
    if not identity:
        return ""
    shown = {True: "1", False: "0"}
    return " ".join(f"{k}={shown.get(v, v) if isinstance(v, bool) else v}" for k, v in sorted(identity.items()))
