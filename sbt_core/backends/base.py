"""The Backend protocol: what a search strategy may ask of a language model.

Every backend (torch/transformers, llama.cpp, the scripted test backend) returns plain
Python values, so strategies never import torch. Prompts are full texts (the puzzle
prompt from ``sbt_core.trace.prompt`` followed by a response prefix of step lines);
completions are the text generated after the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

FINISH_REASONS = ("eos", "stop", "length")
SMALL_MODEL_PARAMS = 50_000_000


def inference_threads(n_params: int, explicit: int | str | None = None) -> int | None:
    """Threads for inference: ``explicit`` (``BackendOptions.threads``: ``--threads``,
    ``SBT_NUM_THREADS`` or ``OMP_NUM_THREADS``), else 1 for models under 50M parameters
    (None: the library's default). A small model's decoding is hundreds of tiny ops per
    token, where a second thread costs more in wake-ups than it gains (figures: README,
    "Speed on these 2 cores")."""
    n = explicit
    if n and str(n).isdigit() and int(n) > 0:
        return int(n)
    return 1 if n_params < SMALL_MODEL_PARAMS else None


def finish_reason(token: int, eos_id: int | None, stop_ids: set[int], line_ids: set[int] = frozenset()) -> str | None:
    """Why generation ends at ``token`` ("eos" or "stop"), or None when it goes on: the end
    token, a marker (``Goal Reached!`` / ``<backtrack>``), or a newline with ``stop_at_line``."""
    if token == eos_id:
        return "eos"
    if token in stop_ids or token in line_ids:
        return "stop"
    return None


@dataclass
class Completion:
    """One generated continuation of a prompt.

    ``text``: the generated text after the prompt, including the final marker line
    (``Goal Reached!`` / ``<backtrack>``) if any, without the end-of-sequence token.
    ``token_ids`` / ``token_logprobs``: every generated token (the end token included
    when one was generated) and its log-probability under the model's untempered
    distribution. ``finish``: ``"eos"`` (end token), ``"stop"`` (a marker token or, with
    ``stop_at_line``, the end of a line) or ``"length"`` (``max_new_tokens`` reached).
    """

    text: str
    token_ids: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    finish: str = "eos"

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def mean_logprob(self) -> float:
        """Negative log-perplexity of the completion (0.0 for an empty one)."""
        lps = self.token_logprobs
        return float(sum(lps) / len(lps)) if lps else 0.0


@runtime_checkable
class Backend(Protocol):
    backend_name: str  # "torch", "llama", "scripted"
    model_name: str  # the model's name (directory name) or a label
    model_sha256: str  # sha256 over the weights ("" when there are none)

    def sample(
        self,
        prompts: list[str],
        n: int,
        temperature: float,
        max_new_tokens: int,
        seed: int,
        top_k: int | None = None,
        stop_at_line: bool = False,
    ) -> list[list[Completion]]:
        """``n`` completions for each prompt (outer list: prompts, inner: samples).

        ``temperature == 0`` is greedy decoding. Generation stops at the end token, right
        after a ``Goal Reached!`` / ``<backtrack>`` token, after one ``\\n``-terminated
        line when ``stop_at_line`` is set, or after ``max_new_tokens`` tokens. The same
        arguments (seed included) give the same completions.
        """
        ...

    def beam(self, prompt: str, width: int, max_new_tokens: int) -> list[Completion]:
        """Beam search: ``width`` finished beams, best first (by length-normalised log-prob)."""
        ...

    def score(self, prompt: str, continuation: str) -> list[float]:
        """Log-probability of each token of ``continuation`` given ``prompt``."""
        ...
