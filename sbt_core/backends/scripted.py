"""A scripted backend: canned completions keyed by the search state, for tests and demos.

No weights, no torch. A *state* is the response prefix after ``###Response:\\n`` (complete
step lines, each ending in ``\\n``; ``""`` is the root). For each state the script lists
the completions the "model" gives, in order; sample ``i`` of a call is entry
``i % len(entries)``, so results depend only on the arguments (the seed is ignored and
the same call always gives the same answer)::

    from sbt_core.backends.scripted import ScriptedBackend
    from sbt_core.trace import GOAL, BACKTRACK

    backend = ScriptedBackend({
        "": ["4 + 5 = 9\\n9 * 3 = 27\\n" + GOAL,            # default log-prob per token
             ("4 * 5 = 20\\n" + BACKTRACK, -2.0)],          # (text, mean log-prob)
        "4 * 5 = 20\\n": [("20 + 3 = 23\\n" + GOAL, [-0.5] * 12)],  # per-token log-probs
        ("4 + 5 = 9",): ["..."],                          # a tuple of step lines works too
    }, logprob=-0.1, default=None)

Keys may also be a full prompt text (``trace.prompt(puzzle) + prefix``) to script one
puzzle only; full-prompt keys win over prefix keys. ``default`` answers unscripted
states: ``None`` raises ``KeyError``; a string is used as is; a callable
``default(puzzle, prefix_lines) -> str`` computes it (``solver_continuation`` makes a
perfect model from the exact solver, handy for demos). Every call is recorded in
``backend.calls`` as ``(method, [state, ...], n)`` so tests can check which states were
expanded.

Tokens: ``Goal Reached!``, ``<backtrack>`` and the `` op `` pieces are one token each,
every other character is one token (``ScriptedBackend.tokenize``); a completion that
ends without a marker or newline gets an end token (id 0), like a real model's
``<eos>``. ``stop_at_line=True`` returns only the first line of each entry.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, Sequence, Union

from ..countdown import Puzzle
from ..trace import BACKTRACK, GOAL, RESPONSE_HEAD, parse_prompt, render_solution, render_steps
from .base import Completion

Entry = Union[str, tuple, Completion]
Default = Union[str, Callable[[Puzzle, list], str], None]

EOS_ID = 0
_PIECES = [GOAL, BACKTRACK, " + ", " - ", " * ", " / ", " = "]
_PIECE_IDS = {p: 256 + i for i, p in enumerate(_PIECES)}
_TOKEN = re.compile("|".join(re.escape(p) for p in _PIECES) + r"|[\s\S]")


def solver_continuation(puzzle: Puzzle, prefix: list[str]) -> str:
    """What a perfect model says from a state: the rest of a solution, or ``<backtrack>``."""
    from ..countdown import state_after
    from ..solver import is_solvable, solve

    from ..countdown import parse_step

    state = state_after(puzzle, prefix)
    if state is None:
        return BACKTRACK
    last = parse_step(prefix[-1]) if prefix else None
    if not puzzle.uses_all and last is not None and last.result == puzzle.target:
        return render_solution([])  # (rules "any": the target is made, the answer may stop here)
    if not is_solvable(state, puzzle.target, puzzle.rules):
        return BACKTRACK
    rest = solve(Puzzle(state, puzzle.target, puzzle.rules)) or []
    return render_solution(rest)


class ScriptedBackend:
    """Deterministic canned completions keyed by response prefix (see the module doc)."""

    backend_name = "scripted"

    def __init__(
        self,
        script: Mapping[Union[str, tuple], Sequence[Entry]] | None = None,
        *,
        logprob: float = -0.1,
        default: Default = None,
        model_name: str = "scripted",
    ) -> None:
        self.logprob = float(logprob)
        self.default = default
        self.model_name = model_name
        self.model_sha256 = ""
        self.calls: list[tuple[str, list[str], int]] = []
        self.script: dict[str, list[Completion]] = {}
        for key, entries in (script or {}).items():
            state = render_steps(key) if isinstance(key, (tuple, list)) else str(key)
            self.script[state] = [self._completion(e) for e in entries]

    # -- tokens -------------------------------------------------------------------
    @staticmethod
    def tokenize(text: str) -> list[int]:
        """Token ids of a text: markers and `` op `` pieces are single tokens, else characters."""
        return [_PIECE_IDS.get(t, ord(t) if len(t) == 1 else 1) for t in _TOKEN.findall(text)]

    def _completion(self, entry: Entry, finish: str | None = None) -> Completion:
        if isinstance(entry, Completion):
            return entry
        text, lps = (entry, None) if isinstance(entry, str) else (entry[0], entry[1])
        ids = self.tokenize(text)
        if finish is None:
            marker = text.rstrip().endswith((GOAL, BACKTRACK))
            finish = "stop" if marker or text.endswith("\n") else "eos"
        if finish == "eos":
            ids.append(EOS_ID)
        if lps is None:
            lps = [self.logprob] * len(ids)
        elif isinstance(lps, (int, float)):
            lps = [float(lps)] * len(ids)
        else:
            lps = [float(x) for x in lps]
            if len(lps) != len(ids):
                raise ValueError(f"{text!r}: {len(ids)} tokens (ScriptedBackend.tokenize) but {len(lps)} log-probs")
        return Completion(text, ids, lps, finish)

    # -- lookup -------------------------------------------------------------------
    @staticmethod
    def state_of(prompt: str) -> str:
        """The response prefix of a full prompt (the text after ``###Response:\\n``)."""
        head, sep, rest = prompt.partition(RESPONSE_HEAD)
        return rest if sep else prompt

    def entries(self, prompt: str) -> list[Completion]:
        if prompt in self.script:
            return self.script[prompt]
        state = self.state_of(prompt)
        if state in self.script:
            return self.script[state]
        if self.default is None:
            raise KeyError(f"ScriptedBackend: no script for state {state!r}")
        if isinstance(self.default, str):
            return [self._completion(self.default)]
        puzzle = parse_prompt(prompt)
        lines = [x for x in state.split("\n") if x]
        return [self._completion(self.default(puzzle, lines))]

    @staticmethod
    def _truncate(c: Completion, max_new_tokens: int, stop_at_line: bool) -> Completion:
        text, ids, lps, finish = c.text, list(c.token_ids), list(c.token_logprobs), c.finish
        if stop_at_line and "\n" in text and not text.startswith((GOAL, BACKTRACK)):
            text = text[: text.index("\n") + 1]
            k = len(ScriptedBackend.tokenize(text))
            ids, lps, finish = ids[:k], lps[:k], "stop"
        if len(ids) > max_new_tokens:
            k = max_new_tokens
            pieces = _TOKEN.findall(text)
            text, ids, lps, finish = "".join(pieces[:k]), ids[:k], lps[:k], "length"
        return Completion(text, ids, lps, finish)

    # -- Backend protocol ------------------------------------------------------------
    def sample(self, prompts: list[str], n: int, temperature: float, max_new_tokens: int,
               seed: int, top_k: int | None = None, stop_at_line: bool = False) -> list[list[Completion]]:
        self.calls.append(("sample", [self.state_of(p) for p in prompts], n))
        out = []
        for p in prompts:
            entries = self.entries(p)
            picks = [entries[0]] * n if temperature == 0 else [entries[i % len(entries)] for i in range(n)]
            out.append([self._truncate(c, max_new_tokens, stop_at_line) for c in picks])
        return out

    def beam(self, prompt: str, width: int, max_new_tokens: int) -> list[Completion]:
        """The distinct entries of the state, best mean log-prob first (ties: script order)."""
        self.calls.append(("beam", [self.state_of(prompt)], width))
        seen, uniq = set(), []
        for c in self.entries(prompt):
            if c.text not in seen:
                seen.add(c.text)
                uniq.append(c)
        uniq.sort(key=lambda c: -c.mean_logprob)
        return [self._truncate(c, max_new_tokens, False) for c in uniq[:width]]

    def score(self, prompt: str, continuation: str) -> list[float]:
        """The scripted log-probs when ``continuation`` is an entry of that state, else ``logprob`` per token."""
        self.calls.append(("score", [self.state_of(prompt)], 1))
        try:
            for c in self.entries(prompt):
                if c.text == continuation:
                    return list(c.token_logprobs[: len(self.tokenize(continuation))])
        except KeyError:
            pass
        return [self.logprob] * len(self.tokenize(continuation))


__all__ = ["ScriptedBackend", "solver_continuation"]
