"""Greedy accuracy with the strict verifier (used for learning curves during training):
sbt's own greedy method, so "val greedy" in training.json is what ``sbt bench --methods
greedy`` measures on the same weights."""

from __future__ import annotations

from dataclasses import dataclass, field

from sbt_core.backends.base import Completion
from sbt_core.countdown import Puzzle
from sbt_core.search import METHODS
from sbt_core.search.common import state_prompt
from sbt_core.search.events import Sample, SearchResult
from sbt_core.trace import parse_response

GREEDY_MAX_NEW_TOKENS = METHODS["greedy"].defaults["max_new_tokens"]


@dataclass
class GreedyReport:
    n: int = 0
    solved: int = 0
    ended_backtrack: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.solved / self.n if self.n else 0.0

    def to_json(self) -> dict:
        return {"n": self.n, "accuracy": self.accuracy, "ended_backtrack": self.ended_backtrack / max(self.n, 1),
                "failures": self.failures}


class _Prefetched:
    """A backend whose greedy root completions were computed ahead by the backend's own
    ``sample``, many puzzles per call; the greedy method then asks for them one puzzle at
    a time and gets them from here. Any other call goes to the backend."""

    def __init__(self, backend, done: dict[tuple[str, int], Completion]) -> None:
        self._backend, self._done = backend, done

    def __getattr__(self, name: str):
        return getattr(self._backend, name)

    def sample(self, prompts: list[str], n: int, temperature: float, max_new_tokens: int, seed: int,
               top_k: int | None = None, stop_at_line: bool = False) -> list[list[Completion]]:
        if (n == 1 and temperature <= 0 and not stop_at_line and len(prompts) == 1
                and (prompts[0], max_new_tokens) in self._done):
            return [[self._done[prompts[0], max_new_tokens]]]
        return self._backend.sample(prompts, n, temperature, max_new_tokens, seed, top_k=top_k,
                                    stop_at_line=stop_at_line)


def greedy_results(model, tokenizer, puzzles: list[Puzzle], batch_size: int = 128,
                   max_new_tokens: int = GREEDY_MAX_NEW_TOKENS) -> list[tuple[SearchResult, str]]:
    """sbt's greedy method (the code ``sbt bench --methods greedy`` runs, over
    ``TorchBackend.from_model``) on each puzzle: ``(result, response text)``.

    The model calls are batched: the backend's ``sample`` decodes ``batch_size`` puzzles
    at once (left-padded; the same tokens as one at a time on the shipped models' val
    puzzles, 600 of 600) and the method reads them back. ``batch_size=1`` makes exactly
    bench's calls, one puzzle per call. The model stays on its device and goes back to
    train mode if it was in it."""
    from sbt_core.backends.torch_backend import TorchBackend
    from sbt_core.engine import solve

    was_training = model.training
    device = str(next(model.parameters()).device)
    params = {"max_new_tokens": max_new_tokens}
    out: list[tuple[SearchResult, str]] = []
    try:
        backend = TorchBackend.from_model(model, tokenizer, device=device)
        for s in range(0, len(puzzles), max(1, batch_size)):
            chunk = puzzles[s:s + max(1, batch_size)]
            run_on = backend
            if len(chunk) > 1:
                prompts = list(dict.fromkeys(state_prompt(p, []) for p in chunk))
                done = backend.sample(prompts, 1, 0.0, max_new_tokens, 0)
                run_on = _Prefetched(backend, {(q, max_new_tokens): c[0] for q, c in zip(prompts, done)})
            for puzzle in chunk:
                result, events = solve(run_on, "greedy", puzzle, params, keep_events=True)
                text = next((e.text for e in events if isinstance(e, Sample)), "")
                out.append((result, text))
    finally:
        model.train(was_training)
    return out


def greedy_texts(model, tokenizer, puzzles: list[Puzzle], batch_size: int = 128,
                 max_new_tokens: int = GREEDY_MAX_NEW_TOKENS) -> list[str]:
    """Greedy responses (text after the prompt) for each puzzle (``greedy_results``)."""
    return [text for _, text in greedy_results(model, tokenizer, puzzles, batch_size, max_new_tokens)]


def greedy_accuracy(model, tokenizer, puzzles: list[Puzzle], batch_size: int = 128) -> GreedyReport:
    """Accuracy of sbt's greedy method with the strict verifier: the number that
    ``sbt bench --methods greedy`` gives for the same weights and puzzles."""
    report = GreedyReport()
    for result, text in greedy_results(model, tokenizer, puzzles, batch_size):
        report.n += 1
        report.ended_backtrack += parse_response(text).backtracked
        if result.verdict.ok:
            report.solved += 1
        else:
            failure = str(result.verdict.failure)
            report.failures[failure] = report.failures.get(failure, 0) + 1
    return report
