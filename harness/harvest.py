"""Rejection sampling on TRAIN puzzles: ``sbt harvest``.

For each puzzle of a seeded slice of ``<data>/train.jsonl`` the model draws ``n`` samples;
the samples that end in ``Goal Reached!`` AND pass the strict verifier are the puzzle's
verified paths, and the one the model likes best (highest mean token log-prob) is written
as one line ``{"numbers", "target", "steps", "train_index", "verified", "mean_logprob"}``
of a paths file that ``sbt train --paths`` trains on (with ``--data op+back`` the
backtracking examples are built on these paths). Puzzles with no verified sample are
skipped, unless ``mistakes`` > 0: then each line also carries ``"mistakes"``, up to that
many of the puzzle's samples that claimed ``Goal Reached!`` but fail the verifier, each cut
after the step where it went wrong (``sbt_core.solver.false_claim_cut``: its first wrong
arithmetic or broken rule, else its first step into a dead end), likeliest first and
distinct; a puzzle with mistakes but no verified path gets a line with ``"steps": null``.
``sbt train --paths`` turns them into backtracking examples on the model's OWN errors.
With ``labelled`` > 0 each line also carries ``"samples"``: up to that many of the puzzle's
distinct verified samples and as many distinct failing ones (likeliest first), each
``{"text", "verified", "finish", "mean_logprob"}`` with the strict verifier's label (a
sample verifies when it ends in ``Goal Reached!`` and passes ``countdown.verify``): the
preference data of ``sbt train --objective dpo|kto`` (``training/preference.py``); a
puzzle with labelled samples but no verified path gets a line with ``"steps": null``.
This is the verifier used as a *data filter on training puzzles* (rejection sampling /
STaR, as in the paper's expert iteration), never on evaluation splits: the slice refuses
puzzles that are also in val / test_seen / test_new.

Resumable: ``<out>.json`` records the settings and how many slice puzzles are done; a
re-run with the same settings continues after them (a line written after the last
record is dropped and redone). Same settings, same file. ``--puzzles`` alone may change
between runs: the slice of N puzzles is the first N of one seeded order, so a larger N
extends the file and a smaller one cuts it to its first N puzzles. One writer per file: a
harvest holds the lock of its paths file (``sbt_core.locks``), a second one is refused.
With worker processes (``--workers``) or torchrun ranks the batches are sampled elsewhere
(``harness.workers``) and this process writes them in slice order: the same file.
"""

from __future__ import annotations

import json
from contextlib import closing, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from sbt_core.countdown import Puzzle
from sbt_core.errors import SbtError
from sbt_core.files import write_atomic, write_json
from sbt_core.limits import MAX_PUZZLES, MAX_SEED, SEARCH_MAXIMUM, check_range, check_temperature
from sbt_core.locks import output_lock
from sbt_core.solver import false_claim_cut
from sbt_core.trace import is_verified, parse_response, prompt

from .iterate import train_slice

BATCH = 8  # prompts per backend call


@dataclass
class HarvestConfig:
    model: str
    numbers: int
    data: str  # data folder with train.jsonl
    puzzles: int = 10_000
    n: int = 16
    temperature: float = 0.7
    max_new_tokens: int = 96
    seed: int = 0
    backend: str = "torch"
    mistakes: int = 0  # per puzzle: false "Goal Reached!" samples kept, cut where they went wrong
    labelled: int = 0  # per puzzle and label: distinct samples kept with the verifier's label (DPO/KTO data)

    def __post_init__(self) -> None:
        """Every budget inside its documented limit (``sbt_core.limits``), before any model loads."""
        check_range(self.puzzles, "--puzzles", 1, MAX_PUZZLES, integer=True)
        check_range(self.n, "--n", 1, SEARCH_MAXIMUM["n"], integer=True)
        check_range(self.mistakes, "--mistakes", 0, SEARCH_MAXIMUM["n"], integer=True)
        check_range(self.labelled, "--labelled", 0, SEARCH_MAXIMUM["n"], integer=True)
        check_range(self.max_new_tokens, "--max-new-tokens", 1, SEARCH_MAXIMUM["max_new_tokens"], integer=True)
        check_range(self.seed, "--seed", 0, MAX_SEED, integer=True)
        # rejection sampling needs samples: a positive temperature
        self.temperature = check_temperature(self.temperature, allow_zero=False)


def best_verified(puzzle, completions) -> tuple[list[str] | None, int, float]:
    """(steps of the best verified completion or None, how many verified, its mean log-prob)."""
    best, best_lp, count = None, float("-inf"), 0
    for c in completions:
        resp = parse_response(c.text)
        if is_verified(puzzle, c.text):
            count += 1
            if c.mean_logprob > best_lp:
                best, best_lp = resp.lines, c.mean_logprob
    return best, count, best_lp


def own_mistakes(puzzle, completions, limit: int) -> list[list[str]]:
    """Up to ``limit`` distinct false goal claims, each cut after the step where it went
    wrong (``false_claim_cut``; that step is the last line), the likeliest (mean token
    log-prob) first. Samples whose wrong line is not a step, or with no wrong step at all,
    are not kept."""
    if limit <= 0:
        return []
    found: dict[tuple[str, ...], float] = {}
    for c in completions:
        resp = parse_response(c.text)
        if resp.ending != "goal":
            continue
        i = false_claim_cut(puzzle, resp.steps)  # None for an answer that verifies
        if i is None or resp.steps[i] is None:
            continue
        key = tuple(str(s) for s in resp.steps[:i + 1])
        found[key] = max(found.get(key, float("-inf")), c.mean_logprob)
    ranked = sorted(found, key=lambda k: (-found[k], k))
    return [list(k) for k in ranked[:limit]]


def labelled_samples(puzzle, completions, limit: int) -> list[dict]:
    """Up to ``limit`` distinct verified samples and ``limit`` distinct failing ones (by
    text), each label's likeliest (mean token log-prob) first, verified ones first:
    ``{"text", "verified", "finish", "mean_logprob"}``."""
    if limit <= 0:
        return []
    found: dict[str, tuple[float, str]] = {}  # text -> (best mean log-prob, finish)
    for c in completions:
        if c.text not in found or c.mean_logprob > found[c.text][0]:
            found[c.text] = (c.mean_logprob, c.finish)
    kept = []
    for label in (True, False):
        same = [t for t in found if is_verified(puzzle, t) == label]
        for text in sorted(same, key=lambda t: (-found[t][0], t))[:limit]:
            kept.append({"text": text, "verified": label, "finish": found[text][1],
                         "mean_logprob": round(found[text][0], 6)})
    return kept


# settings added after the first harvests: a record without them was made with these values
_LATER_SETTINGS = {"mistakes": 0, "labelled": 0, "backend_options": {}}


def _meta_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def _resume_point(out: Path, settings: dict, slice_index: dict[int, int]) -> tuple[int, int, int]:
    """(slice puzzles done, paths kept, mistakes kept) so far (zeros for a new file); trims
    lines past that point."""
    meta = _meta_path(out)
    if not meta.is_file():
        if out.exists() and out.stat().st_size:
            raise SbtError(f"{out} exists and was not written by `sbt harvest`; choose another --out")
        return 0, 0, 0
    try:
        saved = json.loads(meta.read_text())
        done = int(saved["done"])
    except (ValueError, KeyError, TypeError):
        raise SbtError(f"{meta} is not a harvest record; remove it with {out} to start again") from None
    # --puzzles may change: the slice of N puzzles is the first N of one seeded order
    old = saved.get("settings", {})
    diff = [k for k in settings if k != "puzzles" and old.get(k, _LATER_SETTINGS.get(k)) != settings[k]]
    if diff:
        raise SbtError(f"{out} was harvested with other settings ({', '.join(diff)}); use the same ones to "
                       "resume, or another --out")
    done = min(done, len(slice_index))
    keep, paths, mistakes = [], 0, 0
    if out.is_file():
        for line in out.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if slice_index.get(row.get("train_index"), done) < done:
                keep.append(line + "\n")
                paths += bool(row.get("steps"))
                mistakes += len(row.get("mistakes") or [])
    write_atomic(out, "".join(keep))
    return done, paths, mistakes


def harvest(cfg: HarvestConfig, out: Path, backend, log: Callable[[str], None] = print,
            on_progress: Callable[[int, int, int], None] | None = None, lock: bool = True, *,
            workers: int = 1, ranks=None, options=None) -> dict | None:
    """Run (or resume) the harvest into ``out``; returns the summary written to ``<out>.json``.

    Holds the lock of ``out`` (``sbt_core.locks``; a second writer is refused) unless
    ``lock`` is False: the caller holds it (``sbt harvest`` takes it before the model loads).

    ``workers`` > 1: the batches are sampled by that many worker processes
    (``harness.workers``), each opening ``cfg.model`` with ``options`` (``backend`` is then
    None: this process loads no model), and this process writes them in order. ``ranks``
    (torchrun): the ranks share the batches and rank 0 alone writes ``out`` (and takes its
    lock); the other ranks return None. Either way the file is the one a single process
    writes: a batch's samples depend only on its puzzles and its seed."""
    out = Path(out)
    if lock and (ranks is None or ranks.writer):
        with output_lock(out, is_dir=False, what="--out"):
            return _harvest(cfg, out, backend, log, on_progress, workers, ranks, options)
    return _harvest(cfg, out, backend, log, on_progress, workers, ranks, options)


def batch_rows(backend, cfg: HarvestConfig, start: int, batch: list[dict]) -> list[dict]:
    """The lines of one batch of the slice (``start``: its first puzzle's place in the
    slice, which seeds its samples): one per puzzle with a verified path or, with
    ``cfg.mistakes``, a false goal claim. Whichever process runs it, the same lines."""
    chosen = [Puzzle.from_json(r) for r in batch]
    samples = backend.sample([prompt(p) for p in chosen], n=cfg.n, temperature=cfg.temperature,
                             max_new_tokens=cfg.max_new_tokens, seed=cfg.seed * 1_000_003 + start)
    lines = []
    for r, puzzle, comps in zip(batch, chosen, samples):
        steps, count, lp = best_verified(puzzle, comps)
        wrong = own_mistakes(puzzle, comps, cfg.mistakes)
        labelled = labelled_samples(puzzle, comps, cfg.labelled)
        if steps or wrong or labelled:
            row = {"numbers": list(puzzle.numbers), "target": puzzle.target, "steps": steps,
                   "train_index": r["train_index"], "verified": count,
                   "mean_logprob": round(lp, 6) if steps else None}
            if cfg.mistakes:
                row["mistakes"] = wrong
            if cfg.labelled:
                row["samples"] = labelled
            lines.append(row)
    return lines


def _harvest(cfg: HarvestConfig, out: Path, backend, log: Callable[[str], None],
             on_progress: Callable[[int, int, int], None] | None, workers: int = 1, ranks=None,
             options=None) -> dict | None:
    if workers > 1 or ranks is not None:
        return _harvest_shared(cfg, out, backend, log, on_progress, workers, ranks, options)
    rows = train_slice(Path(cfg.data), cfg.puzzles, cfg.seed, 1)
    settings = _settings(cfg, backend)
    slice_index = {r["train_index"]: i for i, r in enumerate(rows)}
    out.parent.mkdir(parents=True, exist_ok=True)
    done, kept, n_mistakes = _resume_point(out, settings, slice_index)
    if done:
        log(f"resuming {out}: {done:,} of {len(rows):,} puzzles done, {kept:,} paths kept")
    with open(out, "a") as f:
        for start in range(done, len(rows), BATCH):
            batch = rows[start:start + BATCH]
            for row in batch_rows(backend, cfg, start, batch):
                kept += bool(row["steps"])
                n_mistakes += len(row.get("mistakes") or [])
                f.write(json.dumps(row) + "\n")
            f.flush()
            done = start + len(batch)
            _write_meta(out, settings, done, kept, len(rows), n_mistakes)
            if on_progress:
                on_progress(done, len(rows), kept)
    return _write_meta(out, settings, done, kept, len(rows), n_mistakes)


def _settings(cfg: HarvestConfig, backend) -> dict:
    """What a harvest file is keyed by: the config, the weights, the backend and the backend
    options that change the samples (``backend``: an opened backend or its
    ``harness.workers.ModelInfo``)."""
    settings = {**asdict(cfg), "model_sha256": backend.model_sha256, "backend": backend.backend_name}
    options = getattr(backend, "options", None)  # non-default backend options change the samples
    settings["backend_options"] = options.identity(backend.backend_name) if options is not None else {}
    return settings


def _harvest_shared(cfg: HarvestConfig, out: Path, backend, log: Callable[[str], None],
                    on_progress: Callable[[int, int, int], None] | None, workers: int, ranks,
                    options) -> dict | None:
    """``_harvest`` with the batches sampled by worker processes and/or torchrun ranks;
    this process (rank 0) writes them in slice order, each as soon as the batches before
    it are written, so the record's ``done`` stays a prefix of the slice, as in the serial
    path (an interrupt loses at most the batches in flight)."""
    from .workers import WorkerPool, agreed, run_tasks

    rows = train_slice(Path(cfg.data), cfg.puzzles, cfg.seed, 1)
    key = (cfg.model, cfg.backend, cfg.numbers)
    with WorkerPool(workers, options=options) if workers > 1 else nullcontext() as pool:
        if pool is not None:
            info = pool.open(key)
        else:
            if backend is None:
                from sbt_core.backends import load_backend

                backend = load_backend(cfg.model, cfg.backend, cfg.numbers, **({"options": options} if options else {}))
            info = backend
        settings = _settings(cfg, info)
        if ranks is not None:
            ranks.check_same(settings, "model, backend or train slice")
        slice_index = {r["train_index"]: i for i, r in enumerate(rows)}

        def plan() -> tuple[int, int, int]:
            out.parent.mkdir(parents=True, exist_ok=True)
            return _resume_point(out, settings, slice_index)

        done, kept, n_mistakes = agreed(ranks, plan)
        starts = list(range(done, len(rows), BATCH))
        results = run_tasks(batch_rows, ((start, (cfg, start, rows[start:start + BATCH])) for start in starts),
                            key=key, pool=pool, backend=None if pool is not None else backend, ranks=ranks,
                            count=len(starts))
        if ranks is not None and not ranks.writer:
            for _ in results:  # this rank's batches, sent to rank 0
                pass
            return None
        if done:
            log(f"resuming {out}: {done:,} of {len(rows):,} puzzles done, {kept:,} paths kept")
        waiting: dict[int, list[dict]] = {}  # batches done out of order, until those before them are
        with open(out, "a") as f, closing(results):
            for start, lines in results:
                waiting[start] = lines
                while done in waiting:
                    for row in waiting.pop(done):
                        kept += bool(row["steps"])
                        n_mistakes += len(row.get("mistakes") or [])
                        f.write(json.dumps(row) + "\n")
                    f.flush()
                    done = min(done + BATCH, len(rows))
                    _write_meta(out, settings, done, kept, len(rows), n_mistakes)
                    if on_progress:
                        on_progress(done, len(rows), kept)
    return _write_meta(out, settings, done, kept, len(rows), n_mistakes)


def _write_meta(out: Path, settings: dict, done: int, kept: int, total: int, mistakes: int = 0) -> dict:
    summary = {"settings": settings, "done": done, "puzzles": total, "kept": kept,
               "kept_share": round(kept / done, 4) if done else 0.0}
    if settings.get("mistakes"):
        summary["mistakes"] = mistakes
    write_json(_meta_path(out), summary, what="harvest record")
    return summary
