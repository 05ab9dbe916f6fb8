"""The decoding core: the sampling tree, written once over a small ``Decoder`` interface.

A backend (the torch KV cache, llama.cpp sequences) implements ``Decoder`` for one call of
``sample``; ``sample_tree`` does the bookkeeping every backend shares: samples whose tokens
so far are identical share one *row* of the decoder (a node of the tree), a row splits when
its samples draw different tokens, rows whose samples have all finished are dropped, and
every sample still draws its own token from its row's distribution, so the samples equal
decoding each one apart, for far fewer decoded tokens when the model is peaked.

The draw (the random numbers) stays each backend's own (``Decoder.draw``: a seeded
``torch.Generator`` for torch, a ``numpy.random.Generator`` for llama.cpp), and so does the
order in which samples draw (``Decoder.draw_order``): torch draws in sample order, llama.cpp
row by row. That is what keeps every backend's seeded samples as they were.

``beam_search`` is written over the same rows (it needs ``Decoder.logprobs`` too); both
backends use it (the torch backend ran transformers' ``generate`` until issue 21).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any, Literal, Protocol

import numpy as np

from .base import Completion, finish_reason

Logits = Any  # a [rows, vocab] array of the backend's kind (torch.Tensor, numpy.ndarray)


class Decoder(Protocol):
    """One call's rows of a model's cache. Row indices are those of the last returned logits."""

    draw_order: Literal["sample", "row"]  # the order in which the live samples draw

    def prefill(self, prompts: list[list[int]]) -> Logits:
        """Start one row per prompt; the next-token logits of each (row i: prompts[i])."""

    def step(self, parents: list[int], tokens: list[int]) -> Logits:
        """The new rows: row j is row ``parents[j]`` extended by ``tokens[j]``. A parent named
        twice is forked (its cache shared or copied), a row not named is dropped. Returns the
        next-token logits of the new rows."""

    def draw(self, logits: Logits, row_of: list[int]) -> tuple[list[int], list[float]]:
        """One token per draw (draw d from row ``row_of[d]``) and its untempered log-prob."""

    def release(self) -> None:
        """Drop every row (the end of a group)."""

    def logprobs(self, logits: Logits) -> np.ndarray:
        """Log-softmax of every row, as float32 numpy (``beam_search`` only)."""


def sample_tree(decoder: Decoder, prompts: list[list[int]], n: int, max_new: int, greedy: bool,
                text: Callable[[list[int]], str], eos_id: int | None, marker_ids: set[int],
                stops: set[int] = frozenset(), max_samples: int | None = None,
                max_prompts: int | None = None) -> list[list[Completion]]:
    """``n`` completions of each token list in ``prompts`` (outer list: prompts).

    Greedy decoding (``greedy``) decodes one sample per prompt and copies it ``n`` times.
    Samples run in groups of at most ``max_samples`` samples and ``max_prompts`` distinct
    prompts (None: no limit), in output order, one after the other (the draws go on from
    one group to the next). ``max_new``: the new tokens at most (the caller bounds it by the
    model's context). Generation of a sample ends at the end token, a marker, a token of
    ``stops`` or after ``max_new`` tokens."""
    per_prompt = 1 if greedy else n
    items = [(k, i) for k in range(len(prompts)) for i in range(per_prompt)]
    groups, cur = [], []
    for it in items:
        if cur and ((max_samples and len(cur) >= max_samples)
                    or (max_prompts and it[0] != cur[-1][0] and len({k for k, _ in cur}) >= max_prompts)):
            groups.append(cur)
            cur = []
        cur.append(it)
    groups.append(cur)
    gen_ids: list[list[int]] = [[] for _ in items]
    gen_lps: list[list[float]] = [[] for _ in items]
    finish = ["length"] * len(items)
    for group in groups:
        order = list(dict.fromkeys(k for k, _ in group))
        rows = [[kk * per_prompt + i for kk, i in group if kk == k] for k in order]  # sample k * per_prompt + i
        _grow(decoder, [prompts[k] for k in order], rows, max_new, gen_ids, gen_lps, finish,
              (eos_id, marker_ids, stops))
    out = []
    for k in range(len(prompts)):
        comps = [Completion(text(gen_ids[s]), gen_ids[s], gen_lps[s], finish[s])
                 for s in range(k * per_prompt, (k + 1) * per_prompt)]
        if greedy:
            c = comps[0]
            comps = [Completion(c.text, list(c.token_ids), list(c.token_logprobs), c.finish) for _ in range(n)]
        out.append(comps)
    return out


def _grow(decoder: Decoder, prompts: list[list[int]], rows: list[list[int]], max_new: int,
          gen_ids: list[list[int]], gen_lps: list[list[float]], finish: list[str], ends: tuple) -> None:
    """Decode one group as a tree. ``rows[r]``: the samples of row r (prompt r at first);
    ``ends``: ``finish_reason``'s arguments after the token."""
    logits = decoder.prefill(prompts)
    by_row = decoder.draw_order == "row"
    draws = [(s, r) for r, members in enumerate(rows) for s in members]  # (sample, row), in draw order
    for _ in range(max_new):
        toks, lps = decoder.draw(logits, [r for _, r in draws])
        branches: dict[tuple[int, int], int] = {}  # (row, token) -> its new row
        live = []
        for (s, r), tok, lp in zip(draws, toks, lps):
            gen_ids[s].append(tok)
            gen_lps[s].append(lp)
            reason = finish_reason(tok, *ends)
            if reason:
                finish[s] = reason
            else:
                live.append((s, branches.setdefault((r, tok), len(branches))))
        if not live:
            break
        if by_row:  # row by row, each row's samples in the order they drew (a stable sort)
            live.sort(key=itemgetter(1))
        draws = live  # (by sample: still in sample order)
        logits = decoder.step([r for r, _ in branches], [t for _, t in branches])
    decoder.release()


def beam_search(decoder: Decoder, prompt: list[int], width: int, max_new: int, text: Callable[[list[int]], str],
                eos_id: int | None, marker_ids: set[int]) -> list[Completion]:
    """Beam search over the decoder's rows: at each step the ``2*width`` best extensions of
    the live beams (by summed log-prob); ones ending in the end token or a marker finish
    (scored by mean log-prob) when among the best ``width``, the best ``width`` others go on
    (a beam's children fork its row); stops when ``width`` beams have finished (early
    stopping) or at ``max_new`` tokens, where the live beams count as finished."""
    ends = {eos_id, *marker_ids} - {None}
    logits = decoder.prefill([prompt])
    beams: list[tuple[list[int], list[float]]] = [([], [])]  # row r: (tokens, logprobs)
    finished: list[tuple[float, list[int], list[float], str]] = []
    for _ in range(max_new):
        logp = decoder.logprobs(logits)
        scores = np.array([sum(lps) for _, lps in beams])[:, None] + logp
        new: list[tuple[int, list[int], list[float]]] = []
        for rank, idx in enumerate(np.argsort(-scores, axis=None, kind="stable")[:2 * width]):
            r, tok = divmod(int(idx), logp.shape[1])
            toks, lps = beams[r][0] + [tok], beams[r][1] + [float(logp[r, tok])]
            if tok in ends:
                if rank < width:
                    finished.append((float(np.mean(lps)), toks, lps, finish_reason(tok, eos_id, marker_ids)))
            elif len(new) < width:
                new.append((r, toks, lps))
        if len(finished) >= width or not new:
            beams = [] if len(finished) >= width else beams
            break
        logits = decoder.step([r for r, _, _ in new], [toks[-1] for _, toks, _ in new])
        beams = [(toks, lps) for _, toks, lps in new]
    decoder.release()
    if len(finished) < width:
        finished += [(float(np.mean(lps)) if lps else 0.0, toks, lps, "length") for toks, lps in beams]
    finished.sort(key=lambda f: -f[0])
    return [Completion(text(t), t, lps, why) for _, t, lps, why in finished[:width]]
