"""Expert iteration (slow thinking -> fast thinking): ``sbt iterate``.

Round 0 evaluates the starting model. Round r = 1..K then:

1. **search** — self-backtracking search (n, b, temperature) with the model of round r-1
   on a slice of TRAIN puzzles (``<data>/train.jsonl``; a different seeded slice per
   round; never an evaluation split: the slice is checked against val / test_seen /
   test_new). Stored as a run on the slice file ``<out>/round<r>/search-train.jsonl``.
2. **keep** — only the answers that verify (``sbt_core.countdown.verify``) are written to
   ``<out>/round<r>/paths.jsonl`` (``{"numbers", "target", "steps"}`` per line).
3. **fine-tune** — ``training.sft.train`` with ``paths_file=``: the verified answers as
   plain D_op examples (``train_data="op"``, what the authors' script does: its training
   texts are the selected search outputs, no ``<backtrack>``) or with D_back examples built
   on them too (``"op+back"``: the model keeps seeing backtracking data), from the starting
   model (``restart_from="base"``, sbt's default) or from the model of round r-1
   (``"previous"``, what the authors' ``train_self_improvement.py`` does: each iteration
   loads the previous one's model). The model is saved in ``<out>/round<r>/model``. (The
   authors' script also searches the evaluation split itself; sbt searches train only.)
4. **evaluate** — the new model on ``test_new`` (``eval_limit`` puzzles): *fast* = greedy
   decoding, *slow* = the same self-backtracking search; both stored as runs.
5. **record** — one row in the ``iterations`` table.

Which model searches in round r+1: the model fine-tuned in round r, and it is also the
slow model of round r. This follows the paper: the self-backtracking model is fine-tuned
on its own verified search outputs; it still knows ``<backtrack>`` (it was fine-tuned from
the backtracking model), so one model is evaluated both ways, fast (greedy) and slow
(search), and the next round searches with it. With ``restart_from="base"`` each round
fine-tunes the *starting* model on the paths found by the latest model (paths of that
round only).

Resuming: a round whose ``iterations`` row is ``done`` is not redone. Inside an unfinished
round every step resumes too: the search and evaluation runs continue in the store (same
run identity), training continues from its checkpoint (or is skipped when the round's
model was already saved). Settings that change what an experiment means (model, data,
search and training settings) must match the ones it was started with; a different
setting needs another experiment name.

``workers`` (``--workers K``, 1-64): the train-slice searches and the test_new evaluations
run through ``Bench`` with ``workers=K``, as ``sbt bench --workers`` does: K spawned
processes each open the model themselves (``_open_labelled``, torch, same options) and
this process writes every row; the rows are those of ``workers=1``, and ``workers`` is
part of neither the experiment's identity nor a run's. With 1 the model opened here
(``backend_factory``) is used, as always. Fine-tuning is one process either way.
"""

from __future__ import annotations

import functools
import json
import math
import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sbt_core.countdown import DEFAULT_RULES, Puzzle, verify
from sbt_core.errors import SbtError
from sbt_core.generate import EVAL_SPLITS, eval_puzzle_keys, read_puzzles
from sbt_core.limits import (MAX_PUZZLES, MAX_ROUNDS, SEARCH_MAXIMUM, check_range, check_temperature)
from sbt_core.locks import output_lock
from training.config import check_optimisation

from .runner import _SOURCE_CACHE, BenchInterrupted, NullObserver, RunOutcome, evaluate, resolve_data_dir
from .store import Store

SEARCH_METHOD = "self-backtrack"
FAST_METHOD = "greedy"
EVAL_SPLIT = "test_new"
TRAIN_FILE = "train.jsonl"
RESTARTS = ("base", "previous")
TRAIN_DATA = ("op", "op+back")
# settings that define an experiment: resuming with a different one is refused
IDENTITY = ("start_model_sha256", "numbers", "data", "train_puzzles", "n", "b", "temperature", "eval_limit",
            "tokens", "restart_from", "seed", "lr", "batch_size", "warmup_steps", "train_data")
# the value an identity setting had before it was recorded (experiments started earlier)
LEGACY = {"train_data": "op"}


@dataclass
class IterateConfig:
    model: str  # the starting (self-backtracking) model: a name in models/ or a directory
    experiment: str
    out: Path  # a folder per round: round<r>/{search-train.jsonl, paths.jsonl, model/}
    numbers: int = 4
    data: Path | None = None  # default data/countdown<numbers>
    rounds: int = 3
    train_puzzles: int = 2000  # train puzzles searched per round
    n: int = 16
    b: int = 1
    temperature: float = 0.7
    eval_limit: int | None = 1000  # test_new puzzles per evaluation (None: all)
    tokens: int = 500_000  # fine-tuning budget per round (training tokens)
    restart_from: str = "base"  # base (sbt's default) | previous (continue from round r-1: the authors' script)
    train_data: str = "op"  # op: plain verified paths (the authors' script) | op+back: plus D_back built on them
    seed: int = 0
    lr: float = 5e-4
    batch_size: int = 64
    warmup_steps: int = 20
    val_puzzles: int = 100  # val greedy check at the end of each fine-tune
    threads: int = 0  # torch threads for fine-tuning (0: default)
    trace: bool = False  # store the event traces of the evaluation runs
    workers: int = 1  # --workers: processes for the searches and evaluations (not part of the identity)

    def __post_init__(self) -> None:
        """Every setting inside its documented limit (``sbt_core.limits``), before anything runs."""
        self.out = Path(self.out)
        if self.restart_from not in RESTARTS:
            raise SbtError(f"--restart-from must be one of {', '.join(RESTARTS)}, got {self.restart_from!r}")
        if self.train_data not in TRAIN_DATA:
            raise SbtError(f"--data must be one of {', '.join(TRAIN_DATA)} (or a data folder), got {self.train_data!r}")
        check_range(self.rounds, "--rounds", 0, MAX_ROUNDS, integer=True)
        check_range(self.train_puzzles, "--train-puzzles", 1, MAX_PUZZLES, integer=True)
        check_range(self.n, "--n", 1, SEARCH_MAXIMUM["n"], integer=True)
        check_range(self.b, "--b", 0, SEARCH_MAXIMUM["b"], integer=True)
        self.temperature = check_temperature(self.temperature)
        if self.eval_limit is not None:
            check_range(self.eval_limit, "--eval-limit", 1, MAX_PUZZLES, integer=True)
        check_optimisation(self.tokens, self.lr, self.batch_size, self.threads, self.seed)  # (as sbt train does)
        check_range(self.warmup_steps, "warmup_steps", 0, math.inf, integer=True)
        check_range(self.val_puzzles, "val_puzzles", 1, MAX_PUZZLES, integer=True)
        from .workers import check_workers

        self.workers = check_workers(self.workers)

    @property
    def search_params(self) -> dict:
        return {"n": self.n, "b": self.b, "temperature": self.temperature}


# --------------------------------------------------------------------------- backends


def torch_backend_factory(path: Path, label: str, role: str, options=None):
    """Open a model directory with the torch backend and ``options`` (a ``BackendOptions``;
    None: from the environment), named ``label`` in the store. ``role`` is ``search`` /
    ``eval`` (the default factory ignores it; tests use it)."""
    from sbt_core.backends.torch_backend import TorchBackend

    backend = TorchBackend(path, options)
    backend.model_name = label
    return backend


torch_backend_factory.same_for_all_roles = True  # one opened model serves search and evaluation


def _open_labelled(paths: dict, model: str, backend: str, n_numbers: int, options=None):
    """A ``harness.workers.WorkerPool`` loader (module-level: workers are spawned): open
    ``paths[model]`` (``model`` is the run's label) with the torch backend and ``options``,
    named ``model`` in the store, as ``torch_backend_factory`` does. ``backend`` and
    ``n_numbers`` come with the pool's key; iterate always searches with torch."""
    from sbt_core.backends.torch_backend import TorchBackend

    opened = TorchBackend(Path(paths[model]), options)
    opened.model_name = model
    return opened


class _Backends:
    """Keeps the latest opened model: round r's evaluation model searches in round r+1."""

    def __init__(self, factory: Callable[[Path, str, str], Any]) -> None:
        self.factory = factory
        self.shared = bool(getattr(factory, "same_for_all_roles", False))
        self.key: tuple | None = None
        self.backend = None

    def get(self, path: Path, label: str, role: str):
        key = (str(Path(path).resolve()), label, None if self.shared else role)
        if key != self.key:
            self.backend = None  # free the previous model first
            self.backend = self.factory(Path(path), label, role)
            self.key = key
        return self.backend


# --------------------------------------------------------------------------- train puzzles


def train_slice(data_dir: Path, count: int, seed: int, round_: int) -> list[dict]:
    """Round ``round_``'s puzzles: ``count`` lines of ``<data_dir>/train.jsonl`` taken from a
    seeded permutation, consecutive slices for consecutive rounds (they only repeat once
    the rounds have used the whole file). Refuses any puzzle that is in an evaluation split."""
    train_file = Path(data_dir) / TRAIN_FILE
    assert train_file.name == TRAIN_FILE  # search puzzles only ever come from the train split
    if not train_file.is_file():
        raise SbtError(f"no train split: {train_file} not found (generate it with "
                       f"`sbt data generate --out {data_dir}`)")
    puzzles = read_puzzles(train_file)
    if not puzzles:
        raise SbtError(f"{train_file} has no puzzles")
    order = list(range(len(puzzles)))
    random.Random(f"sbt-iterate-{seed}").shuffle(order)
    start = (round_ - 1) * count
    picked = [order[(start + i) % len(order)] for i in range(min(count, len(order)))]
    held_out = eval_puzzle_keys(data_dir)
    leaked = [i for i in picked if puzzles[i].key in held_out]
    if leaked:
        raise SbtError(f"{train_file}: {len(leaked)} of the round-{round_} search puzzles are also in an "
                       f"evaluation split ({', '.join(EVAL_SPLITS)}); refusing to search on them")
    # (numbers, target and, when not "all", the puzzle's rules: the search and its paths keep them)
    return [{"id": f"train-{i:06d}", "split": "train", "train_index": i, **puzzles[i].to_json()} for i in picked]


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, separators=(", ", ": ")) + "\n" for r in rows)


# --------------------------------------------------------------------------- verified paths


def verified_paths(store: Store, run_id: int) -> list[dict]:
    """The answers of a search run that verify, as paths-file rows (unverified ones dropped).

    The ``solved`` flag of a result is the strict verifier's; the steps are verified again
    here, under the run's rules, so that nothing unverified can reach training (a row names
    its rules when they are not "all")."""
    out = []
    rules = store.run(run_id).get("rules") or DEFAULT_RULES  # (NULL: a run from before rules)
    for r in store.results(run_id):
        if not r["solved"]:
            continue
        puzzle = Puzzle(tuple(json.loads(r["numbers"])), r["target"], rules)
        steps = json.loads(r["steps"] or "[]")
        if steps and verify(puzzle, steps).ok:
            out.append({**puzzle.to_json(), "steps": steps, "puzzle_index": r["puzzle_index"]})
    return out


# --------------------------------------------------------------------------- the experiment


@dataclass
class Iteration:
    """``sbt iterate``: run (or resume) one experiment; see the module doc."""

    cfg: IterateConfig
    store: Store
    log: Callable[[str], None] = print
    backend_factory: Callable[[Path, str, str], Any] | None = None  # (path, label, role); None: torch
    observer_factory: Callable[[str], Any] | None = None  # (title) -> context-managed bench observer
    on_train_step: Callable[[dict], None] | None = None
    options: Any = None  # BackendOptions of the searches and evaluations (--dtype/--device; None: environment)
    _backends: _Backends = field(init=False)

    def __post_init__(self) -> None:
        self._backends = _Backends(self.backend_factory or torch_backend_factory)

    # -- settings

    def preflight(self) -> Path:
        """Errors before anything runs (no store needed): the starting model's directory and
        the data files must exist. Returns the model directory."""
        from sbt_core.models import resolve_model

        start = resolve_model(self.cfg.model)
        for name in (f"{EVAL_SPLIT}.jsonl", TRAIN_FILE):
            if name == TRAIN_FILE and not self.cfg.rounds:
                continue
            if not (self.data_dir / name).is_file():
                raise SbtError(f"{self.data_dir / name} not found (generate the data with `sbt data generate "
                               f"--numbers {self.cfg.numbers} --out {self.data_dir}`, or pass --data)")
        return start

    def settings(self, start: Path) -> dict:
        from sbt_core.models import model_sha256

        c = self.cfg
        return {"start_model": str(c.model), "start_model_sha256": model_sha256(start), "numbers": c.numbers,
                "data": str(self.data_dir.resolve()), "train_puzzles": c.train_puzzles, "n": c.n, "b": c.b,
                "temperature": c.temperature, "eval_split": EVAL_SPLIT, "eval_limit": c.eval_limit,
                "tokens": c.tokens, "restart_from": c.restart_from, "seed": c.seed, "lr": c.lr,
                "batch_size": c.batch_size, "warmup_steps": c.warmup_steps, "train_data": c.train_data, "out": str(c.out)}

    def _check_same_experiment(self, settings: dict) -> None:
        for row in self.store.iterations(self.cfg.experiment):
            before = json.loads(row["params"] or "{}")
            before = {**{k: v for k, v in LEGACY.items() if before}, **before}
            diff = [k for k in IDENTITY if k in before and before[k] != settings[k]]
            if diff:
                what = ", ".join(f"{k}={before[k]!r} (now {settings[k]!r})" for k in diff)
                raise SbtError(f"experiment {self.cfg.experiment!r} was started with {what}; pass the same "
                               f"settings to resume it, or choose another --experiment")

    @property
    def data_dir(self) -> Path:
        return resolve_data_dir(self.cfg.data, self.cfg.numbers)

    def label(self, round_: int, path: Path) -> str:
        return path.name if round_ == 0 else f"{self.cfg.experiment}-round{round_}"

    # -- steps

    def _evaluate(self, method: str, path: Path, label: str, role: str, title: str, **kw) -> RunOutcome:
        """One stored run of ``method`` with the model ``path`` (named ``label``): here with
        the model opened once (``_backends``), or with ``cfg.workers`` > 1 in worker
        processes that open it themselves (``_open_labelled``)."""
        if self.cfg.workers > 1:
            kw.update(workers=self.cfg.workers, options=self.options,
                      load_backend=functools.partial(_open_labelled, {label: str(Path(path))}))
        else:
            kw["backend_obj"] = self._backends.get(path, label, role)
        obs = self.observer_factory(title) if self.observer_factory else nullcontext(NullObserver())
        with obs as observer:
            out = evaluate(self.store, method, model=label, params=kw.pop("params", None),
                           n_numbers=self.cfg.numbers, seed=self.cfg.seed, observer=observer, **kw)
        if out.status != "done":
            raise SbtError(f"run #{out.run_id} ({method}) is still being written by another process; "
                           "re-run when it has finished")
        return out

    def evaluate_model(self, round_: int, path: Path) -> tuple[RunOutcome, RunOutcome]:
        """Fast (greedy) and slow (self-backtracking) accuracy of a model on test_new."""
        label = self.label(round_, path)
        common = dict(split=EVAL_SPLIT, data=self.data_dir, limit=self.cfg.eval_limit, trace=self.cfg.trace)
        fast = self._evaluate(FAST_METHOD, path, label, "eval", f"round {round_} fast", **common)
        slow = self._evaluate(SEARCH_METHOD, path, label, "eval", f"round {round_} slow",
                              params=self.cfg.search_params, **common)
        return fast, slow

    def search(self, round_: int, model: Path, model_round: int, round_dir: Path) -> tuple[RunOutcome, Path]:
        """Self-backtracking search on this round's train slice; writes the slice file."""
        rows = train_slice(self.data_dir, self.cfg.train_puzzles, self.cfg.seed, round_)
        slice_file = round_dir / "search-train.jsonl"
        _write_if_changed(slice_file, _jsonl(rows))
        _SOURCE_CACHE.pop(slice_file.resolve(), None)  # re-read it if this process saw an older version
        label = self.label(model_round, model)
        out = self._evaluate(SEARCH_METHOD, model, label, "search", f"round {round_} search (train)",
                             params=self.cfg.search_params, split=None, puzzles_file=slice_file, trace=False)
        run = self.store.run(out.run_id)
        assert run["split"] is None and Path(run["puzzles"]).resolve() == slice_file.resolve(), run
        return out, slice_file

    def fine_tune(self, round_: int, base: Path, paths_file: Path, model_dir: Path) -> dict:
        """Fine-tune ``base`` on the verified paths (resumes from a checkpoint; skipped if saved)."""
        from training.checkpoint import exists as ckpt_exists
        from training.sft import TrainConfig, train

        done = model_dir / "training.json"
        if done.is_file() and (model_dir / "config.json").is_file():
            self.log(f"round {round_}: model already trained ({model_dir})")
            return json.loads(done.read_text())
        c = self.cfg
        tc = TrainConfig(out=str(model_dir), data_dir=str(self.data_dir), data=c.train_data, base_model=str(base),
                         paths_file=str(paths_file), max_tokens=int(c.tokens), batch_size=c.batch_size, lr=c.lr,
                         warmup_steps=c.warmup_steps, seed=c.seed, eval_every=10**9, eval_puzzles=c.val_puzzles,
                         ckpt_every=200, threads=c.threads)
        resume = ckpt_exists(model_dir / "checkpoint")
        self.log(f"round {round_}: fine-tuning {base} on {paths_file} ({c.tokens:,} tokens"
                 f"{', resuming' if resume else ''})")
        return train(tc, resume=resume, log=self.log, on_step=self.on_train_step)

    # -- the loop

    def run(self) -> list[dict]:
        """Run or resume the experiment, holding the lock of ``cfg.out`` (``sbt_core.locks``):
        a second ``sbt iterate`` into the same folder is refused. (Each round's fine-tuning
        takes the lock of its own model folder.)"""
        with output_lock(self.cfg.out, is_dir=True, what="--out"):
            return self._run()

    def _run(self) -> list[dict]:
        from sbt_core.models import model_sha256

        c = self.cfg
        start = self.preflight()
        settings = self.settings(start)
        self._check_same_experiment(settings)
        done = self.store.completed_rounds(c.experiment)
        rows = {r["round"]: r for r in self.store.iterations(c.experiment)}

        if 0 not in done:
            self.log(f"round 0: evaluating the starting model {start}")
            self.store.record_iteration(c.experiment, 0, status="running", model=str(c.model), params=settings)
            fast, slow = self.evaluate_model(0, start)
            rows[0] = self.store.record_iteration(
                c.experiment, 0, status="done", model=str(c.model), model_sha256=settings["start_model_sha256"],
                fast_acc=fast.accuracy, slow_acc=slow.accuracy, eval_split=EVAL_SPLIT,
                fast_run_id=fast.run_id, slow_run_id=slow.run_id, params=settings)
        else:
            self.log(f"round 0: done (fast {rows[0]['fast_acc']:.1%}, slow {rows[0]['slow_acc']:.1%})")

        previous, previous_round = start, 0
        for r in range(1, c.rounds + 1):
            round_dir = c.out / f"round{r}"
            model_dir = round_dir / "model"
            if r in done:
                row = rows[r]
                self.log(f"round {r}: done (fast {row['fast_acc']:.1%}, slow {row['slow_acc']:.1%}); skipped")
                previous, previous_round = Path(row["model"]), r
                continue
            round_dir.mkdir(parents=True, exist_ok=True)
            base = start if c.restart_from == "base" else previous
            params = {**settings, "search_model": str(previous), "search_model_round": previous_round}
            self.store.record_iteration(c.experiment, r, status="running", model=str(model_dir),
                                        base_model=str(base), params=params)
            try:
                self.log(f"round {r}: searching {c.train_puzzles:,} train puzzles with {previous}")
                search, _slice = self.search(r, previous, previous_round, round_dir)
                paths = verified_paths(self.store, search.run_id)
                paths_file = round_dir / "paths.jsonl"
                _write_if_changed(paths_file, _jsonl(paths))
                self.log(f"round {r}: {len(paths):,} of {search.n:,} search answers verified -> {paths_file}")
                if not paths:
                    raise SbtError(f"round {r}: no verified search answer among {search.n:,} train puzzles; "
                                   "nothing to fine-tune on (raise --n / --b / --train-puzzles)")
                self.fine_tune(r, base, paths_file, model_dir)
                fast, slow = self.evaluate_model(r, model_dir)
            except BaseException as exc:
                if not isinstance(exc, (KeyboardInterrupt, BenchInterrupted)):  # interrupted: stays "running"
                    self.store.record_iteration(c.experiment, r, status="failed", params=params)
                raise
            rows[r] = self.store.record_iteration(
                c.experiment, r, status="done", model=str(model_dir), model_sha256=model_sha256(model_dir),
                base_model=str(base), fast_acc=fast.accuracy, slow_acc=slow.accuracy, eval_split=EVAL_SPLIT,
                n_search_puzzles=search.n, n_train_paths=len(paths), search_run_id=search.run_id,
                fast_run_id=fast.run_id, slow_run_id=slow.run_id, params=params)
            self.log(f"round {r}: fast {fast.accuracy:.1%}, slow {slow.accuracy:.1%}")
            previous, previous_round = model_dir, r
        return self.store.iterations(c.experiment)


__all__ = ["IterateConfig", "Iteration", "train_slice", "verified_paths",
           "torch_backend_factory"]
