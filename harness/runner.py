"""The bench runner: a matrix of methods x params x models over a list of puzzles.

Every (method, params, model) cell is one *run* in the results store. A run's identity is
(method, params, model sha256, backend, puzzles sha256, seed, backend options that change
the computation: ``BackendOptions.identity``, and the puzzles' rules when they are "any":
``sbt bench --rules any`` or ``"rules": "any"`` in the puzzle lines); running the same bench
again finds the run and does only the puzzles it has no result for. Each puzzle's result
is committed as soon as it finishes, so kill -9 loses at most the puzzle in flight.

Puzzle ``i`` of a run is searched with seed ``derive_seed(seed, i)``, so a result does not
depend on which puzzles were done before it (resuming gives the same answers), nor on which
process searched it: with ``workers`` > 1 (``sbt bench --workers``) or under torchrun
(``ranks``) the puzzles are searched by worker processes or other ranks (``harness.workers``,
``Bench.run_shared``) while this process still writes every row as it comes back; the rows
are those of one process.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import itertools
import json
import math
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

from sbt_core import settings
from sbt_core.countdown import Puzzle
from sbt_core.engine import solve
from sbt_core.errors import SbtError
from sbt_core.generate import read_puzzles
from sbt_core.search import METHODS, method_params
from sbt_core.search.common import resolve_params, show_value
from sbt_core.search.events import SearchResult

from .store import REPO_ROOT, Store, canonical_json, compress_trace, puzzles_sha256, run_key

class BenchInterrupted(Exception):
    """Ctrl-C / SIGTERM during a bench: the current run was marked ``interrupted``."""

    def __init__(self, run_id: int, done: int, total: int) -> None:
        super().__init__(f"interrupted in run #{run_id} at {done}/{total}")
        self.run_id, self.done, self.total = run_id, done, total


# --------------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class RunSpec:
    method: str
    params: tuple[tuple[str, Any], ...]  # sorted (name, value) pairs: the method's defaults + overrides
    model: str | None  # as asked for (None: the default model, or no model at all)

    @property
    def params_dict(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def needs_model(self) -> bool:
        return METHODS[self.method].needs_model

    def label(self) -> str:
        return format_label(self.method, self.params_dict)


HEADLINE_PARAMS = ("n", "b", "width", "nodes")


def _fmt_value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def format_params(params: dict) -> str:
    return " ".join(f"{k}={_fmt_value(v)}" for k, v in sorted(params.items()))


def format_label(method: str, params: dict) -> str:
    """``self-backtrack n=8 b=1``: the headline params, then any that differ from the defaults."""
    spec = METHODS.get(method)
    defaults = dict(getattr(spec, "defaults", None) or {})
    head = [k for k in HEADLINE_PARAMS if k in params]
    rest = sorted(k for k in params if k not in head and (k not in defaults or params[k] != defaults[k]))
    return " ".join([method] + [f"{k}={_fmt_value(params[k])}" for k in head + rest])


def parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_list(text: str | None, cast: Callable[[str], Any], what: str) -> list:
    """``"8,16,32"`` -> ``[8, 16, 32]`` (order kept, duplicates dropped)."""
    if text is None or not str(text).strip():
        return []
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = cast(part)
        except ValueError:
            raise SbtError(f"{what}: {show_value(part)} is not a valid value") from None
        if value not in out:
            out.append(value)
    return out


def parse_param_options(items: Sequence[str]) -> dict[str, list]:
    """``["width=2,4", "nodes=32"]`` -> ``{"width": [2, 4], "nodes": [32]}``."""
    out: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise SbtError(f"--param {item!r}: expected KEY=VALUE[,VALUE...]")
        out[key] = parse_list(values, parse_value, f"--param {key}")
    return out


def plan_matrix(methods: Sequence[str], ns: Sequence[int], bs: Sequence[int],
                models: Sequence[str | None], temperature: float | None = None,
                extra: dict[str, list] | None = None,
                model_defaults: Callable[[str | None], dict] | None = None,
                model_defaults_name: Callable[[str | None], str] | None = None) -> list[RunSpec]:
    """The runs of a bench: every method x its meaningful params x models.

    A knob is varied only for methods that take it (``Method.params``): ``b`` only for
    self-backtracking, ``n`` not for greedy / beam / exact, ``temperature`` only for
    samplers, ``extra`` (``--param KEY=V,..``) only where KEY is a parameter; methods
    without a model get one run whatever ``models`` says. Each run's params are the
    method's defaults, then ``model_defaults(model)`` (the model's recommended sampling
    settings, ``sbt_core.models.search_defaults``; ``model_defaults_name(model)`` names
    that file in an error line), then these overrides, so a run records every setting it
    used. Every value is checked against the documented limits (``sbt_core.limits``, via
    ``method_params``), also one that no chosen method takes: ``SbtError`` before any run.
    """
    for m in methods:
        if m not in METHODS:
            raise SbtError(f"unknown method {m!r}; choose from: {', '.join(METHODS)}")
    extra = dict(extra or {})
    known = {p for m in methods for p in METHODS[m].params}
    unused = [k for k in extra if k not in known]
    if unused:
        raise SbtError(f"--param {unused[0]}: none of the methods {', '.join(methods)} takes it")
    knobs: dict[str, list] = {"n": list(ns), "b": list(bs)}
    if temperature is not None:
        knobs["temperature"] = [float(temperature)]
    for key, values in [*knobs.items(), *extra.items()]:  # the knobs' limits, whichever method takes them
        for v in values:
            resolve_params({}, {key: v}, names=["--param {key}" if key in extra else "--{flag}"])
    knobs.update(extra)
    models = list(models) or [None]
    specs: list[RunSpec] = []
    for model in models:
        recommended = model_defaults(model) if model_defaults is not None else {}
        where = model_defaults_name(model) if model_defaults_name is not None else None
        for m in methods:
            spec = METHODS[m]
            axes = [[(k, v) for v in values] for k, values in knobs.items() if k in spec.params and values]
            for combo in itertools.product(*axes):
                chosen = dict(combo)
                params = method_params(m, recommended if spec.needs_model else None,
                                       {k: v for k, v in chosen.items() if k not in extra},
                                       {k: v for k, v in chosen.items() if k in extra},
                                       names=[where, "--{flag}", "--param {key}"])
                rs = RunSpec(m, tuple(sorted(params.items())), model if spec.needs_model else None)
                if rs not in specs:
                    specs.append(rs)
    return specs


# --------------------------------------------------------------------------- puzzles


@dataclass
class PuzzleSource:
    path: Path
    split: str | None
    puzzles: list[Puzzle]  # the whole file
    sha256: str

    @property
    def label(self) -> str:
        return self.split or self.path.name

    @property
    def rules(self) -> str:
        """The rules of its puzzles (one rule set per file: ``load_source`` refuses a mix)."""
        return self.puzzles[0].rules if self.puzzles else "all"


def infer_numbers(model: str | None) -> int:
    """How many input numbers a model was trained for (from its name; default 4)."""
    if model:
        m = re.search(r"countdown[-_]?(\d)", Path(model).name)
        if m:
            return int(m.group(1))
    return 4


def resolve_data_dir(data: str | Path | None, n_numbers: int) -> Path:
    if data is None:
        data = Path("data") / f"countdown{n_numbers}"
    data = Path(data)
    if not data.is_absolute() and not data.exists() and (REPO_ROOT / data).exists():
        data = REPO_ROOT / data
    return data


_SOURCE_CACHE: dict[tuple[Path, str | None], PuzzleSource] = {}


def load_source(split: str | None, puzzles_file: str | Path | None, data: str | Path | None = None,
                n_numbers: int = 4, rules: str | None = None) -> PuzzleSource:
    """The puzzle list of a bench: ``--puzzles FILE`` or ``<data>/<split>.jsonl``. ``rules``
    (``--rules``): the rules of lines that name none (None: "all"); a line that names other
    rules, or a file that mixes rules, is refused."""
    if puzzles_file is not None:
        path, split_name = Path(puzzles_file), None
    else:
        split_name = split or "test_new"
        if split_name == "train":
            raise SbtError("benchmarking on the train split is not allowed; use test_new, test_seen or val")
        d = resolve_data_dir(data, n_numbers)
        path = d / f"{split_name}.jsonl"
        if not path.is_file():
            hint = f"sbt data generate --numbers {n_numbers} --out {d}"
            raise SbtError(f"split file not found: {path} (generate it with `{hint}`, or pass --puzzles FILE)")
    key = (path.resolve(), rules)
    if key not in _SOURCE_CACHE:
        puzzles = read_puzzles(path, rules=rules)
        if not puzzles:
            raise SbtError(f"no puzzles in {path}")
        mixed = sorted({p.rules for p in puzzles})
        if len(mixed) > 1:
            raise SbtError(f"{path} mixes puzzles of rules {' and '.join(mixed)}; one run judges one rule set "
                           "(one file per rule set)")
        _SOURCE_CACHE[key] = PuzzleSource(path, split_name, puzzles, puzzles_sha256(puzzles))
    return _SOURCE_CACHE[key]


def puzzles_numbers(puzzles_file: str | Path, rules: str | None = None) -> int:
    """How many input numbers the puzzles of ``puzzles_file`` have: with no ``--model``,
    the default model is picked by it (``sbt_core.models.default_model``, as ``sbt solve``
    does). ``SbtError`` for a file that mixes sizes (no one default model fits it)."""
    sizes = sorted({len(p.numbers) for p in load_source(None, puzzles_file, rules=rules).puzzles})
    if len(sizes) > 1:
        raise SbtError(f"--puzzles {puzzles_file} mixes puzzles of {', '.join(map(str, sizes))} numbers and no "
                       "default model fits them all; pass --model (or one file per size)")
    return sizes[0]


# --------------------------------------------------------------------------- provenance


def derive_seed(seed: int, index: int) -> int:
    """The search seed of puzzle ``index`` in a run seeded with ``seed``."""
    digest = hashlib.sha256(f"sbt-bench:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@lru_cache(maxsize=1)
def git_sha() -> str | None:
    try:
        sha = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


@lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("sbt", "torch", "transformers", "sqlite-utils"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def command_line() -> str:
    """The command that reproduces a run: the environment settings in effect that change
    what it computes (``sbt_core.settings.run_env``), then the arguments."""
    argv = list(sys.argv)
    if argv:
        argv[0] = Path(argv[0]).name
    env = [f"{k}={shlex.quote(v)}" for k, v in settings.run_env()]
    return " ".join(env + [shlex.quote(a) for a in argv])


def options_identity(backend, options: "settings.BackendOptions | None" = None) -> dict:
    """The backend options a run records and is keyed by: those the loaded backend resolved
    (``backend.options``), else ``options``; only the non-default ones that change what
    ``backend`` computes ({} without a model)."""
    if backend is None:
        return {}
    opts = getattr(backend, "options", None) or options
    name = getattr(backend, "backend_name", None)
    return opts.identity(name) if isinstance(opts, settings.BackendOptions) else {}


def model_label(backend) -> str | None:
    """The stored model name: the model's name, plus the GGUF type for llama.cpp runs
    (``countdown4-backtrack:q8_0``) so that quantizations of one model stay apart."""
    if backend is None:
        return None
    name = getattr(backend, "model_name", None)
    quant = getattr(backend, "quant", None)
    return f"{name}:{quant}" if name and quant else name


# --------------------------------------------------------------------------- observers


class Observer(Protocol):
    def run_started(self, spec: RunSpec, run: dict, total: int, done: int, solved: int) -> None: ...

    def result(self, spec: RunSpec, run: dict, row: dict) -> None: ...

    def run_finished(self, spec: RunSpec, run: dict, status: str) -> None: ...


class NullObserver:
    def run_started(self, spec, run, total, done, solved) -> None:
        pass

    def result(self, spec, run, row) -> None:
        pass

    def run_finished(self, spec, run, status) -> None:
        pass


# --------------------------------------------------------------------------- running


def result_row(index: int, puzzle: Puzzle, result: SearchResult, events: list | None) -> dict:
    st = result.stats
    score = result.score
    if score is not None and not math.isfinite(score):
        score = None
    return {
        "puzzle_index": index,
        "numbers": list(puzzle.numbers),
        "target": puzzle.target,
        "solved": bool(result.solved),
        "failure": None if result.solved else str(result.verdict.failure or "no_answer"),
        "steps": list(result.lines),
        "score": score,
        "tokens": int(st.tokens),
        "model_calls": int(st.model_calls),
        "backtracks": int(st.backtracks),
        "expansions": int(st.expansions),
        "candidates": int(st.candidates),
        "wall_ms": float(st.wall_ms),
        "trace": [e.to_json() for e in events] if events is not None else None,
    }


def solve_one(method: str, puzzle: Puzzle, backend, params: dict, seed: int, trace: bool) -> tuple[SearchResult, list | None]:
    return solve(backend, method, puzzle, params, seed, keep_events=trace)


def solve_task(backend, method: str, puzzle: Puzzle, index: int, params: dict, seed: int, trace: bool) -> dict:
    """Puzzle ``index`` of a run as a worker process (or a torchrun rank) computes it: its
    ``result_row``, the trace already compressed as the store keeps it (``compress_trace``),
    so that the writer has less to do."""
    result, events = solve_one(method, puzzle, backend, params, seed, trace)
    row = result_row(index, puzzle, result, events)
    row["trace"] = compress_trace(row["trace"])
    return row


def identity_key(fields: dict) -> str:
    """The ``run_key`` of a run's ``run_fields`` (what ``Store.get_or_create_run`` keys it by)."""
    return run_key(fields["method"], json.loads(fields["params"]), fields.get("model_sha256"), fields.get("backend"),
                   fields["puzzles_sha256"], fields["seed"], fields.get("backend_options"), fields.get("rules"))


@dataclass
class RunOutcome:
    spec: RunSpec
    run_id: int
    status: str
    total: int
    new: int  # results added by this invocation
    n: int  # results stored for the run
    solved: int

    @property
    def accuracy(self) -> float:
        return self.solved / self.n if self.n else 0.0


@dataclass
class Bench:
    """One ``sbt bench`` invocation (what it runs, where it stores)."""

    store: Store
    specs: list[RunSpec]
    split: str | None = "test_new"
    puzzles_file: str | Path | None = None
    data: str | Path | None = None
    n_numbers: int | None = None
    backend: str = "torch"
    limit: int | None = None
    seed: int = 0
    trace: bool = True
    observer: Any = field(default_factory=NullObserver)
    load_backend: Callable[..., Any] | None = None  # (model, backend, n_numbers[, options=]) -> Backend
    options: settings.BackendOptions | None = None  # backend options (None: from the environment)
    workers: int = 1  # local worker processes (harness.workers); 1: this process, as always
    ranks: Any = None  # harness.workers.Ranks under torchrun (rank 0 writes), else None
    rules: str | None = None  # --rules: of puzzle lines that name none (None: "all"); part of a run's identity
    _backends: dict = field(default_factory=dict)

    def source_for(self, spec: RunSpec) -> PuzzleSource:
        n_numbers = self.n_numbers or infer_numbers(spec.model)
        return load_source(self.split, self.puzzles_file, self.data, n_numbers, self.rules)

    def model_for(self, spec: RunSpec) -> str | None:
        """The model a run opens: the one asked for; without one, under rules other than
        "all", the model trained for the puzzles' size and rules (``default_model``: one line
        naming the models there when there is none), else None (the backend's default)."""
        if spec.model is not None or not spec.needs_model:
            return spec.model
        rules = self.source_for(spec).rules
        if rules == "all":
            return None
        from sbt_core.models import default_model

        return default_model(self.n_numbers or infer_numbers(spec.model), rules)

    def backend_for(self, spec: RunSpec):
        if not spec.needs_model:
            return None
        model = self.model_for(spec)
        key = (model, self.backend)
        if key not in self._backends:
            loader = self.load_backend
            if loader is None:
                from sbt_core.backends import load_backend as loader  # heavy imports stay lazy
            extra = {"options": self.options} if self.options is not None else {}
            self._backends[key] = loader(model, self.backend, self.n_numbers or infer_numbers(spec.model), **extra)
        return self._backends[key]

    def run_fields(self, spec: RunSpec, source: PuzzleSource, backend, n_puzzles: int) -> dict:
        return {
            "method": spec.method,
            "params": canonical_json(spec.params_dict),
            "model": model_label(backend),
            "model_sha256": getattr(backend, "model_sha256", None) if backend is not None else None,
            "backend": getattr(backend, "backend_name", self.backend) if backend is not None else None,
            "backend_options": options_identity(backend, self.options) or None,
            "split": source.split,
            "puzzles": str(source.path),
            "puzzles_sha256": source.sha256,
            "rules": source.rules,
            "training": self._training(spec) if backend is not None else None,
            "puzzles_total": len(source.puzzles),
            "n_puzzles": n_puzzles,
            "seed": int(self.seed),
            "git_sha": git_sha(),
            "versions": canonical_json(versions()),
            "command": command_line(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }

    def _training(self, spec: RunSpec) -> str | None:
        """The training cost of the run's model, as stored (``runs.training``)."""
        from sbt_core.models import training_cost

        cost = training_cost(self.model_for(spec), self.n_numbers or infer_numbers(spec.model))
        return canonical_json(cost) if cost else None

    def run_one(self, spec: RunSpec) -> RunOutcome:
        source = self.source_for(spec)
        puzzles = source.puzzles[: self.limit] if self.limit is not None else source.puzzles
        backend = self.backend_for(spec)
        run, _created = self.store.get_or_create_run(self.run_fields(spec, source, backend, len(puzzles)))
        rid = run["id"]
        done = self.store.done_indices(rid)
        todo = [i for i in range(len(puzzles)) if i not in done]
        already = len(puzzles) - len(todo)
        self.observer.run_started(spec, run, len(puzzles), already, self._solved_in(rid, len(puzzles)))
        with self._recording(spec, run, len(puzzles), already) as new:
            for i in todo:
                stored = self.store.query("select solved from results where run_id = ? and puzzle_index = ?", [rid, i])
                if stored:  # another bench of the same run did it meanwhile
                    self.observer.result(spec, run, {"puzzle_index": i, "solved": stored[0]["solved"]})
                    continue
                result, events = solve_one(spec.method, puzzles[i], backend, spec.params_dict,
                                           derive_seed(self.seed, i), self.trace)
                row = result_row(i, puzzles[i], result, events)
                new[0] += self.store.add_result(rid, row)
                self.observer.result(spec, run, row)
        return self._finish(spec, run, len(puzzles), new[0])

    @contextlib.contextmanager
    def _recording(self, spec: RunSpec, run: dict, total: int, already: int) -> Iterator[list[int]]:
        """The block that writes a run's rows: yields the count of new rows (``[n]``); when the
        block is interrupted the run is marked so (``BenchInterrupted``), when it fails, failed."""
        new = [0]
        try:
            yield new
        except KeyboardInterrupt:
            self.store.set_status(run["id"], "interrupted")
            self.observer.run_finished(spec, run, "interrupted")
            raise BenchInterrupted(run["id"], already + new[0], total) from None
        except BaseException as exc:
            self.store.set_status(run["id"], "failed", f"{type(exc).__name__}: {exc}")
            self.observer.run_finished(spec, run, "failed")
            raise

    def _finish(self, spec: RunSpec, run: dict, total: int, new: int) -> RunOutcome:
        rid = run["id"]
        # done only when every asked-for puzzle has a result (another process may still
        # be writing some of them: then this run stays 'running' for that process)
        missing = [i for i in range(total) if i not in self.store.done_indices(rid)]
        status = "done" if not missing else "running"
        self.store.set_status(rid, status)
        self.observer.run_finished(spec, run, status)
        n, k = self.store.count_results(rid)
        return RunOutcome(spec, rid, status, total, new, n, k)

    def run_shared(self, spec: RunSpec, pool=None) -> RunOutcome | None:
        """``run_one`` with the puzzles shared among worker processes (``pool``, a
        ``harness.workers.WorkerPool``) and/or torchrun ranks (``self.ranks``). The rows are
        those of ``run_one``: puzzle i is searched with ``derive_seed(seed, i)`` wherever it
        runs, and the workers only compute; this process (rank 0) plans what is left to do
        and writes each row as it comes back, so an interrupt keeps what is written. The
        model is opened in the workers (or in each rank), never twice in one process.
        Returns the outcome on the writer, None on the other ranks."""
        from .workers import agreed, run_tasks

        ranks = self.ranks
        source = self.source_for(spec)
        puzzles = source.puzzles[: self.limit] if self.limit is not None else source.puzzles
        key = (self.model_for(spec), self.backend, self.n_numbers or infer_numbers(spec.model)) \
            if spec.needs_model else None
        if key is None:
            backend = None
        elif pool is not None:
            backend = pool.open(key)  # a ModelInfo: the run's identity without the model here
        else:
            backend = self.backend_for(spec)
        fields = self.run_fields(spec, source, backend, len(puzzles))
        if ranks is not None:
            ranks.check_same(identity_key(fields), "model, backend or puzzle file")

        def plan() -> tuple[dict, list[int]]:
            run, _created = self.store.get_or_create_run(fields)
            done = self.store.done_indices(run["id"])
            return run, [i for i in range(len(puzzles)) if i not in done]

        run, todo = agreed(ranks, plan)
        params = spec.params_dict

        def tasks():
            for i in todo:
                if ranks is None:
                    stored = self.store.query("select solved from results where run_id = ? and puzzle_index = ?",
                                              [run["id"], i])
                    if stored:  # another bench of the same run did it meanwhile
                        self.observer.result(spec, run, {"puzzle_index": i, "solved": stored[0]["solved"]})
                        continue
                yield i, (spec.method, puzzles[i], i, params, derive_seed(self.seed, i), self.trace)

        rows = run_tasks(solve_task, tasks(), key=key, pool=pool, backend=None if pool is not None else backend,
                         ranks=ranks, count=len(todo))
        if ranks is not None and not ranks.writer:
            for _ in rows:  # this rank's share, sent to rank 0
                pass
            return None
        rid = run["id"]
        already = len(puzzles) - len(todo)
        self.observer.run_started(spec, run, len(puzzles), already, self._solved_in(rid, len(puzzles)))
        with self._recording(spec, run, len(puzzles), already) as new, contextlib.closing(rows):
            for _i, row in rows:
                new[0] += self.store.add_result(rid, row)
                self.observer.result(spec, run, row)
        return self._finish(spec, run, len(puzzles), new[0])

    def _solved_in(self, run_id: int, total: int) -> int:
        return self.store.query("select coalesce(sum(solved), 0) k from results where run_id = ? and puzzle_index < ?",
                                [run_id, total])[0]["k"]

    def preflight(self) -> None:
        """Check every run's parameters (``sbt_core.limits``), resolve every puzzle file and
        model before starting: errors early, not after an hour, and before any run row is
        written."""
        for spec in self.specs:
            if spec.method not in METHODS:
                raise SbtError(f"unknown method {spec.method!r}; choose from: {', '.join(METHODS)}")
            method_params(spec.method, spec.params_dict, names=[f"{spec.method}: parameter {{key}}"])
        from .workers import check_workers

        check_workers(self.workers)
        for spec in self.specs:
            source = self.source_for(spec)
            self.model_for(spec)  # no model trained for these puzzles' rules: one line, before anything runs
            if self.ranks is not None:  # every rank needs a puzzle of each run
                self.ranks.check_size(len(source.puzzles[: self.limit] if self.limit is not None else source.puzzles),
                                      "puzzle")
        if self.load_backend is None and any(s.needs_model for s in self.specs):
            from sbt_core.backends import backend_spec, resolve_for

            backend_spec(self.backend)  # unknown or not in this build: one line
            for spec in self.specs:
                if spec.needs_model:  # as the backend will resolve it (llama: a GGUF)
                    resolve_for(self.backend, self.model_for(spec), self.n_numbers or infer_numbers(spec.model))

    def run(self) -> list[RunOutcome]:
        """Every run of the matrix; with ``workers`` > 1 or under torchrun (``ranks``) through
        ``run_shared`` (the outcomes on the writer only; [] on the other ranks)."""
        self.preflight()
        if self.workers <= 1 and self.ranks is None:  # this process alone, as always
            return [self.run_one(spec) for spec in self.specs]
        from .workers import WorkerPool

        with WorkerPool(self.workers, self.load_backend, self.options) if self.workers > 1 else \
                contextlib.nullcontext() as pool:
            outcomes = [self.run_shared(spec, pool) for spec in self.specs]
        return [o for o in outcomes if o is not None]


# --------------------------------------------------------------------------- rich progress


def evaluate(store: Store, method: str, *, model: str | None = None, params: dict | None = None,
             backend_obj: Any = None, **kwargs) -> RunOutcome:
    """One method on one model as a stored, resumable run; returns its outcome (``.accuracy``,
    ``.run_id``). For ``sbt iterate``: pass ``backend_obj`` to reuse a model already loaded,
    ``puzzles_file=`` for train puzzles, ``split=``/``data=``/``limit=`` for the evaluation.
    Other keyword arguments are ``Bench`` fields."""
    if method not in METHODS:
        raise SbtError(f"unknown method {method!r}; choose from: {', '.join(METHODS)}")
    spec_m = METHODS[method]
    full = method_params(method, params)  # what a bench of the same run records: the same identity
    spec = RunSpec(method, tuple(sorted(full.items())), model if spec_m.needs_model else None)
    if backend_obj is not None:
        kwargs["load_backend"] = lambda *_a, **_k: backend_obj
    return Bench(store, [spec], **kwargs).run()[0]
