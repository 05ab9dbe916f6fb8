"""Training data: D_op (one solution path per puzzle) and D_back (a correct prefix, ONE
wrong step, then <backtrack>), and the paper's loss mask.

Each ``Example`` is text plus the character spans whose tokens are NOT trained: the
prompt always, and in a backtracking example the wrong step (its line and newline).
``<backtrack>`` and the end-of-sequence token are trained, so the model learns to
recognise errors without ever learning to make them.

Everything is built under the puzzle's own rules (``Puzzle.rules``, ``countdown`` module
doc), through ``sbt_core``'s verifier and solver: under rules "any" (TV Countdown) a
solution uses a subset of the numbers and stops at the first step that makes the target
(``countdown.is_finished``), its question ends in `` (any)``, and a wrong step is one that
``solver.first_wrong_step`` calls wrong under those rules (a dead end is a step after which
no subset of the numbers left makes the target; a step that makes it is never one). Under
rules "all" every example is the one it always was (``tests/test_data_rules_any.py`` pins them).
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator

from sbt_core.countdown import (DEFAULT_RULES, Puzzle, Step, apply_op, apply_step, is_finished, legal_steps, parse_step,
                                replay, state_after, verify)
from sbt_core.errors import SbtError
from sbt_core.solver import false_claim_cut, first_wrong_step, is_solvable, random_solution
from sbt_core.trace import prompt, render_backtrack, render_solution, render_steps

ERROR_KINDS = ("exploration", "computational", "rule")


@dataclass
class Recipe:
    """What to build: ``data`` is "op" (SFT baseline) or "op+back" (self-backtracking)."""

    data: str = "op+back"
    back_ratio: float = 1.0  # |D_back| / |D_op|
    kind_weights: tuple[float, float, float] = (1.0, 2.0, 2.0)  # exploration : computational : rule
    # the share of computational errors that are a last step claiming the target with wrong
    # arithmetic ("29 + 41 = 80"): the models' most common false "Goal Reached!". Half of
    # them follow the solution path's prefix; half follow a dead end ("goal-claim" examples,
    # see dead_end_goal_claim), with everything but <backtrack> and the end token masked.
    goal_forcing: float = 0.5
    # the share of the model's OWN false goal claims in a paths file (`sbt harvest --mistakes`)
    # that become backtracking examples: its prefix and wrong step masked, <backtrack> trained
    own_errors: float = 1.0
    # the share of paths that also get an "honest-last" example: the solution's last two
    # numbers combined by another operation, its CORRECT result (which misses the target),
    # then <backtrack>. The operation is masked; the result and <backtrack> are trained, so a
    # last step is computed rather than copied from the target (a positive last step always
    # equals the target, which lets a small model learn to write the target whatever the sum).
    honest_last: float = 0.0

    def __post_init__(self) -> None:
        if self.data not in ("op", "op+back"):
            raise ValueError(f"--data must be 'op' or 'op+back', got {self.data!r}")
        if not 0.0 <= self.goal_forcing <= 1.0:
            raise ValueError(f"--goal-forcing must be between 0 and 1, got {self.goal_forcing}")
        if not 0.0 <= self.own_errors <= 1.0:
            raise ValueError(f"--own-errors must be between 0 and 1, got {self.own_errors}")
        if not 0.0 <= self.honest_last <= 1.0:
            raise ValueError(f"--honest-last must be between 0 and 1, got {self.honest_last}")
        self.kind_weights = tuple(float(w) for w in self.kind_weights)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Example:
    prompt: str
    response: str
    kind: str  # "op" or an error kind
    masked: list[tuple[int, int]] = field(default_factory=list)  # char spans of prompt+response

    @property
    def text(self) -> str:
        return self.prompt + self.response


def op_example(puzzle: Puzzle, path: list[Step]) -> Example:
    p = prompt(puzzle)
    return Example(p, render_solution(path), "op", [(0, len(p))])


def back_example(puzzle: Puzzle, prefix: list[Step], wrong: Step, kind: str, train_prefix: bool = True) -> Example:
    """``train_prefix=False`` masks the prefix too (a prefix off every solution path, which
    the model must not learn to write): only ``<backtrack>`` and the end token are trained."""
    p = prompt(puzzle)
    start = len(p) + len(render_steps(prefix))
    end = start + len(f"{wrong}\n")
    masked = [(0, len(p)), (start, end)] if train_prefix else [(0, end)]
    return Example(p, render_backtrack(prefix, wrong), kind, masked)


def honest_last_example(puzzle: Puzzle, path: list[Step], rng: random.Random) -> Example | None:
    """The path's prefix, then the last two numbers combined by another legal operation
    with its true result (not the target), then ``<backtrack>``; only the result, the
    newline, ``<backtrack>`` and the end token are trained. None when every operation on
    the last two numbers gives the target. (Under rules "any" the last step may take any two
    of the numbers left: another legal step from there into a dead end.)"""
    state = state_after(puzzle, path[:-1])
    moves = dead_ends(state, puzzle.target, puzzle.rules) if last_step_from(state, puzzle.target, puzzle.rules) else []
    if not moves:
        return None
    last = rng.choice(moves)
    p = prompt(puzzle)
    start = len(p) + len(render_steps(path[:-1]))
    return Example(p, render_backtrack(path[:-1], last), "honest-last",
                   [(0, start), (start, start + len(f"{last.a} {last.op} {last.b} = "))])


def until_finished(puzzle: Puzzle, path: list[Step]) -> list[Step]:
    """``path`` up to its first step that completes an answer (``countdown.is_finished``):
    under rules "any" the first step that makes the target (a walk over a subset may make it
    on the way: ``50 * 2 = 100``, ``100 * 1 = 100``); under rules "all" a solution path whole.
    A path that never completes one is returned as it is."""
    state: tuple[int, ...] = ()
    for i, move in enumerate(replay(puzzle, path)):
        if not move.ok:
            break
        state = move.state
        if is_finished(puzzle, state, move.step.result):
            return path[:i + 1]
    return path


# ---- wrong steps -----------------------------------------------------------------

def dead_ends(state: tuple[int, ...], target: int, rules: str = DEFAULT_RULES) -> list[Step]:
    """The legal, correct steps from ``state`` that ``solver.first_wrong_step`` calls wrong
    under ``rules``: after them the target can no longer be reached (under rules "any" a
    step that makes the target is never one), in ``legal_steps`` order."""
    here = Puzzle(tuple(state), target, rules)  # (the numbers left, as a puzzle of their own)
    return [s for s in legal_steps(state) if first_wrong_step(here, [s]) == 0]


def last_step_from(state: tuple[int, ...], target: int, rules: str = DEFAULT_RULES) -> bool:
    """Whether a step from ``state`` that makes the target would complete an answer
    (``countdown.is_finished``, on the one number fewer a step leaves): under rules "all" only
    a step on the last two numbers, under "any" a step on any two."""
    return len(state) >= 2 and is_finished(Puzzle(tuple(state), target, rules), state[1:], target)


def exploration_error(state: tuple[int, ...], target: int, rng: random.Random,
                      rules: str = DEFAULT_RULES) -> Step | None:
    """A legal, correct step after which the target can no longer be reached (under ``rules``)."""
    dead = dead_ends(state, target, rules)
    return rng.choice(dead) if dead else None


def computational_error(state: tuple[int, ...], rng: random.Random) -> Step | None:
    """Available numbers, a legal operation, a wrong result."""
    moves = legal_steps(state)
    if not moves:
        return None
    s = rng.choice(moves)
    for _ in range(20):
        delta = rng.choice([1, 1, 2, 3, 5, 10, rng.randint(1, max(2, s.result))])
        wrong = s.result + delta if rng.random() < 0.5 or s.result - delta < 0 else s.result - delta
        if wrong != s.result and wrong >= 0:
            return Step(s.a, s.op, s.b, wrong)
    return None


def goal_forcing_error(state: tuple[int, ...], target: int, rng: random.Random,
                       rules: str = DEFAULT_RULES) -> Step | None:
    """The last two numbers, a legal operation, and the target written as its result although
    the operation does not give it (a computational error that fakes the goal). Under rules
    "any": any two of the numbers (any step may be the last)."""
    if not last_step_from(state, target, rules):
        return None
    moves = [s for s in legal_steps(state) if s.result != target]
    if not moves:
        return None
    s = rng.choice(moves)
    return Step(s.a, s.op, s.b, target)


def dead_end_goal_claim(puzzle: Puzzle, rng: random.Random) -> tuple[list[Step], Step] | None:
    """The models' own false "Goal Reached!": correct steps chosen at random until two
    numbers are left from which the target cannot be reached, then the operation whose
    result is NEAREST the target, with the target written as its result ("171 - 90 = 80").
    Returns (prefix, wrong step) or None when the random prefix did not reach a dead end.
    Under rules "any" the walk stops at the first dead end (no subset of the numbers left
    makes the target), and a walk that makes the target on the way (an answer) gives None."""
    state = tuple(sorted(puzzle.numbers))
    prefix: list[Step] = []
    while len(state) > 2 and (puzzle.uses_all or is_solvable(state, puzzle.target, puzzle.rules)):
        moves = legal_steps(state)
        if not moves:
            return None
        prefix.append(rng.choice(moves))
        state = apply_step(state, prefix[-1])
        if is_finished(puzzle, state, prefix[-1].result):  # (rules "any": a complete answer, no dead end)
            return None
    moves = legal_steps(state)
    if not moves or is_solvable(state, puzzle.target, puzzle.rules):
        return None
    gap = min(abs(m.result - puzzle.target) for m in moves)
    s = rng.choice([m for m in moves if abs(m.result - puzzle.target) == gap])
    return prefix, Step(s.a, s.op, s.b, puzzle.target)


def rule_violation(state: tuple[int, ...], puzzle: Puzzle, rng: random.Random) -> Step | None:
    """A step that breaks a rule: an unavailable number, negative subtraction or inexact division."""
    options = []
    s = sorted(state)
    if len(s) >= 2:
        pairs = [(s[i], s[j]) for i in range(len(s)) for j in range(i + 1, len(s))]
        neg = [(lo, hi) for lo, hi in pairs if lo < hi]
        if neg:
            lo, hi = rng.choice(neg)
            options.append(Step(lo, "-", hi, lo - hi))
        inexact = [(hi, lo) for lo, hi in pairs if lo > 0 and hi % lo]
        if inexact:
            hi, lo = rng.choice(inexact)
            options.append(Step(hi, "/", lo, hi // lo))
    # an unavailable number: one already used up, or one never given
    pool = [x for x in puzzle.numbers if x not in state] or [x for x in range(1, 100) if x not in state]
    if pool and state:
        ghost, real = rng.choice(pool), rng.choice(state)
        op = rng.choice(["+", "*", "-"])
        a, b = max(ghost, real), min(ghost, real)
        r = apply_op(a, op, b)
        if r is not None:
            options.append(Step(a, op, b, r))
    return rng.choice(options) if options else None


def wrong_step(kind: str, state: tuple[int, ...], puzzle: Puzzle, rng: random.Random) -> Step | None:
    if kind == "exploration":
        return exploration_error(state, puzzle.target, rng, puzzle.rules)
    if kind == "computational":
        return computational_error(state, rng)
    return rule_violation(state, puzzle, rng)


# ---- building a data set ----------------------------------------------------------

def examples_for(puzzle: Puzzle, recipe: Recipe, rng: random.Random,
                 path: list[Step] | None = None) -> list[Example]:
    """D_op example for the puzzle and, by the recipe's ratio, D_back examples on its path:
    ``path`` when given (a verified path), else a random solver path; under rules "any" cut
    at its first step that makes the target (``until_finished``)."""
    if path is None:
        path = random_solution(puzzle, rng)
    if path is None:
        return []
    path = until_finished(puzzle, path)
    out = [op_example(puzzle, path)]
    if recipe.data == "op":
        return out
    n_back = int(recipe.back_ratio) + (rng.random() < recipe.back_ratio % 1)
    for _ in range(n_back):
        kind = rng.choices(ERROR_KINDS, weights=recipe.kind_weights)[0]
        # (no draw when the option is off: the same examples as before it existed)
        forcing = kind == "computational" and recipe.goal_forcing > 0 and rng.random() < recipe.goal_forcing
        if forcing and rng.random() < 0.5:  # half of them after a dead end, off the solution path
            claim = next(filter(None, (dead_end_goal_claim(puzzle, rng) for _ in range(8))), None)
            if claim:
                out.append(back_example(puzzle, *claim, "goal-claim", train_prefix=False))
                continue
        for attempt in range(len(ERROR_KINDS) * 4):
            claim_goal = forcing and attempt == 0  # on the path: the last step (then the usual kinds)
            k = len(path) - 1 if claim_goal else rng.randrange(len(path))
            state = state_after(puzzle, path[:k])
            if claim_goal:
                wrong = goal_forcing_error(state, puzzle.target, rng, puzzle.rules)
            else:
                wrong = wrong_step(kind, state, puzzle, rng)
            if wrong is not None:
                out.append(back_example(puzzle, path[:k], wrong, kind))
                break
            if attempt % 4 == 3:  # this kind is impossible here: try the next one
                kind = ERROR_KINDS[(ERROR_KINDS.index(kind) + 1) % len(ERROR_KINDS)]
    # (no draw when the option is off: the same examples as before it existed)
    if recipe.honest_last > 0 and (recipe.honest_last >= 1 or rng.random() < recipe.honest_last):
        honest = honest_last_example(puzzle, path, rng)
        if honest is not None:
            out.append(honest)
    return out


def build_examples(puzzles: Iterable[Puzzle], recipe: Recipe, seed: int) -> Iterator[Example]:
    rng = random.Random(f"data-{seed}")
    for puzzle in puzzles:
        yield from examples_for(puzzle, recipe, rng)


def path_examples(path, limit: int | None = None, recipe: Recipe | None = None,
                  seed: int = 0, counts: dict | None = None, rules: str | None = None) -> tuple[list[Example], int]:
    """Examples from GIVEN solution paths instead of solver paths (``sbt iterate`` and
    ``sbt train --paths`` train on verified search outputs): a JSONL file of
    ``{"numbers": [...], "target": T, "steps": ["a op b = c", ...]}``. A line that is not
    such an object, or whose steps do not verify (``sbt_core.countdown.verify``), is
    dropped. Without ``recipe`` (or with data "op") each path is one D_op example; with an
    op+back recipe the D_back examples are built on the given path as on a solver path,
    and the line's ``"mistakes"`` (`sbt harvest --mistakes`: the model's own false goal
    claims cut after the step where they went wrong) become "own-error" examples,
    everything but ``<backtrack>`` and the end token masked; a mistake not cut there
    (``sbt_core.solver.false_claim_cut``) is dropped, and a line may hold mistakes only
    (``"steps": null``).
    A puzzle (its sorted numbers and target) is trained on once: a later line for a puzzle
    already kept is dropped (e.g. two harvests appended to one file), counted in
    ``counts["duplicates"]`` when ``counts`` is given.
    ``rules``: the rules of lines that name none (None: "all"); a line that names other rules
    is dropped (``Puzzle.from_json``). Each path is verified, and trained on, under its
    puzzle's rules.
    Returns (examples, dropped count: lines with nothing verified to train on); ``limit``
    keeps the first ``limit`` puzzles. A file whose name ends in ``.gz`` is read through gzip."""
    out: list[Example] = []
    dropped = kept = duplicates = 0
    seen: set[tuple] = set()
    rng = random.Random(f"data-{seed}")
    own = recipe is not None and recipe.data == "op+back" and recipe.own_errors > 0
    try:
        if str(path).endswith(".gz"):  # shipped paths files are gzipped
            f = gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape")
        else:
            f = open(path, encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise SbtError(f"cannot read paths file {path}: {exc.strerror or exc}") from None
    with f:
        for line in _lines(f, path):
            if not line.strip():
                continue
            if limit is not None and kept >= limit:
                break
            try:
                obj = json.loads(line)
                puzzle = Puzzle.from_json(obj, rules)
                steps = _steps(obj.get("steps"))
                raw = obj.get("mistakes")
                wrong = [m for m in map(_steps, raw) if m] if own and isinstance(raw, list) else []
            except (ValueError, RecursionError, SbtError):
                steps, wrong = None, []
            ok = bool(steps) and verify(puzzle, steps).ok
            wrong = [m for m in wrong if false_claim_cut(puzzle, m) == len(m) - 1]
            if not ok and not wrong:
                dropped += 1
                continue
            if puzzle.key in seen:
                duplicates += 1
                continue
            seen.add(puzzle.key)
            kept += 1
            if ok:
                out.extend(examples_for(puzzle, recipe, rng, steps) if recipe
                           else [op_example(puzzle, until_finished(puzzle, steps))])
            for m in wrong:
                if recipe.own_errors >= 1 or rng.random() < recipe.own_errors:
                    out.append(back_example(puzzle, m[:-1], m[-1], "own-error", train_prefix=False))
    if counts is not None:
        counts["duplicates"] = duplicates
    return out, dropped


def _steps(raw) -> list[Step] | None:
    """A list of step lines parsed, or None when it is not one or a line is not a step."""
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        return None
    steps = [parse_step(x) for x in raw]
    return None if any(s is None for s in steps) else steps


def _lines(f, path):
    """The file's lines; a damaged (e.g. truncated gzip) file is one clear error."""
    try:
        yield from f
    except (OSError, EOFError) as exc:
        raise SbtError(f"cannot read paths file {path}: {exc}") from None


def encode(example: Example, tokenizer, max_len: int = 256,
           prefix: list[int] | None = None) -> tuple[list[int], list[int]]:
    """Token ids (``prefix`` + text + eos) and labels (-100 where masked).

    ``prefix``: what the tokenizer itself puts in front of a text (``sbt_core.hf.
    special_prefix``: ``<bos>`` for sbt's tokenizer, nothing for one that adds no bos);
    computed when not given. The masks come from the tokens' character offsets
    (``tokens_on_cuts``): a token is trained when its characters are, and no token holds
    characters of both kinds, so the trained tokens decode to exactly the trained text."""
    if prefix is None:
        from sbt_core.hf import special_prefix

        prefix = special_prefix(tokenizer)
    ids, labels = list(prefix), [-100] * len(prefix)
    for tid, (start, end) in zip(*tokens_on_cuts(example, tokenizer)):
        if start == end:  # (a token without characters: it goes with the character it stands before)
            hidden = any(a <= start < b for a, b in example.masked)
        else:
            hidden = any(start >= a and end <= b for a, b in example.masked)
        ids.append(tid)
        labels.append(-100 if hidden else tid)
    ids.append(tokenizer.eos_token_id)
    labels.append(tokenizer.eos_token_id)
    return ids[:max_len], labels[:max_len]


def tokens_on_cuts(example: Example, tokenizer) -> tuple[list[int], list[tuple[int, int]]]:
    """The example's tokens and their character spans, with no token across a *cut*: the
    end of the prompt and every edge of a masked span.

    The text is encoded whole (``return_offsets_mapping``). Where a token holds characters
    on both sides of a cut (a tokenizer that merges ``"\n9"`` across the prompt's end, or
    ``" 12"`` across the masked ``"a op b = "`` of an honest-last example), it is split
    there: the prompt part is the prompt encoded on its own (exactly what a backend feeds
    the model at inference), any other part is the token's own string cut at that character
    and tokenized by the tokenizer's model (BPE / Unigram pieces). sbt's tokenizer never
    needs a split. ``SbtError`` if a split does not give back the same text."""
    text = example.text
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, spans = list(enc["input_ids"]), _tiled(enc["offset_mapping"], len(text))
    p_end = len(example.prompt)
    cuts = sorted({c for span in example.masked for c in span if 0 < c < len(text)} | {p_end})
    if not any(a < c < b for a, b in spans for c in cuts):
        return ids, spans
    out_ids: list[int] = []
    out_spans: list[tuple[int, int]] = []
    first, across = 0, any(a < p_end < b for a, b in spans)
    if across:  # the prompt: as inference encodes it
        head = tokenizer(example.prompt, add_special_tokens=False, return_offsets_mapping=True)
        out_ids, out_spans = list(head["input_ids"]), _tiled(head["offset_mapping"], p_end)
        first = next(i for i, (a, b) in enumerate(spans) if b > p_end)
    for tid, (a, b) in zip(ids[first:], spans[first:]):
        lo = max(a, p_end) if across else a  # (the prompt's part of a token across its end is in ``head``)
        inside = [c for c in cuts if lo < c < b]
        if lo == a and not inside:
            out_ids.append(tid)
            out_spans.append((a, b))
            continue
        for x, y, part in _token_parts(tokenizer, tid, a, b, [lo, *inside, b]):
            out_ids += part
            out_spans += [(x, y)] * len(part)
    if tokenizer.decode(out_ids, skip_special_tokens=False) != tokenizer.decode(ids, skip_special_tokens=False):
        raise SbtError(f"the tokenizer's tokens cannot be cut at sbt's mask boundaries: {text[:60]!r}... does not "
                       "come back whole")
    return out_ids, out_spans


def _token_parts(tokenizer, tid: int, a: int, b: int, edges: list[int]):
    """Token ``tid`` (text ``a..b``) as tokens of each part between ``edges`` (character
    positions, the last one ``b``; a first edge after ``a`` drops the characters before
    it): ``(lo, hi, ids)`` per part. The token's string maps onto its last ``b - a``
    characters one to one (a leading word marker it adds, e.g. ``▁`` at the start of a
    text, stays with the first part)."""
    piece = tokenizer.convert_ids_to_tokens(tid)
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    if not isinstance(piece, str) or len(piece) < b - a or model is None:
        raise SbtError(f"the tokenizer's token {piece!r} holds text on both sides of a mask boundary and cannot be "
                       "split (a fast tokenizer with BPE or Unigram pieces is needed)")
    at = [0 if c == a else len(piece) - (b - c) for c in edges]  # character position -> position in the string
    for lo, hi, x, y in zip(edges, edges[1:], at, at[1:]):
        toks = model.tokenize(piece[x:y])
        if "".join(t.value for t in toks) != piece[x:y]:
            raise SbtError(f"the tokenizer cannot split its token {piece!r} at a mask boundary ({piece[x:y]!r} has no "
                           "pieces of its own)")
        yield lo, hi, [t.id for t in toks]


def _tiled(offsets, length: int) -> list[tuple[int, int]]:
    """Character spans that tile the text: a gap before a token (whitespace a tokenizer
    trims from its offsets) goes to that token, an overlap is cut off, the end of the
    last token is the end of the text."""
    spans, prev = [], 0
    for a, b in offsets:
        a = prev
        b = max(a, min(int(b), length))
        spans.append((a, b))
        prev = b
    if spans and prev < length:
        spans[-1] = (spans[-1][0], length)
    return spans


def trained_text(example: Example) -> list[str]:
    """The runs of trained characters of ``example`` (what is not masked), in order."""
    text, runs, pos = example.text, [], 0
    for a, b in sorted(example.masked):
        if a > pos:
            runs.append(text[pos:a])
        pos = max(pos, b)
    if pos < len(text):
        runs.append(text[pos:])
    return runs


def trained_tokens_text(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """The text of each run of trained tokens, decoded in context (the text the run adds to
    what comes before it: a SentencePiece decoder drops a word marker only at the start)."""
    runs, start = [], None
    for i, lab in enumerate([*labels, -100]):
        if lab != -100 and start is None:
            start = i
        elif lab == -100 and start is not None:
            before = tokenizer.decode(ids[:start], skip_special_tokens=False)
            runs.append(tokenizer.decode(ids[:i], skip_special_tokens=False)[len(before):])
            start = None
    return runs
