"""The decoding core (sbt_core.backends.decoding) over a toy decoder: the sampling tree gives
the samples of decoding every sample apart, with one row per distinct prefix."""

from __future__ import annotations

import hashlib

import numpy as np

from sbt_core.backends.decoding import beam_search, sample_tree

VOCAB, EOS, MARK = 6, 0, 5


def toy_logits(history: list[int]) -> np.ndarray:
    """A fixed, history-dependent distribution (peaked enough that samples share prefixes)."""
    h = hashlib.sha256(bytes(history)).digest()
    x = np.frombuffer(h[:VOCAB], dtype=np.uint8).astype(np.float32) / 40.0
    x[EOS] += 0.2 * len(history) / 4  # longer histories end more often
    return x


class ToyRows:
    """A decoder whose rows are token histories; records the rows of every step."""

    def __init__(self, order: str, seed: int, temperature: float = 1.0) -> None:
        self.draw_order, self.rng, self.temperature = order, np.random.default_rng(seed), temperature
        self.rows: list[list[int]] = []
        self.widths: list[int] = []
        self.released = 0

    def _logits(self) -> np.ndarray:
        self.widths.append(len(self.rows))
        return np.stack([toy_logits(r) for r in self.rows])

    def prefill(self, prompts):
        self.rows = [list(p) for p in prompts]
        return self._logits()

    def step(self, parents, tokens):
        self.rows = [self.rows[p] + [t] for p, t in zip(parents, tokens)]
        return self._logits()

    def draw(self, logits, row_of):
        return draw(logits[np.array(row_of)], self.rng, self.temperature)

    def release(self):
        self.rows = []
        self.released += 1

    def logprobs(self, logits):
        return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def draw(logits: np.ndarray, rng, temperature: float):
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    if temperature <= 0:
        nxt = logits.argmax(-1)
    else:
        cdf = np.exp(logits / temperature).cumsum(-1)
        nxt = np.minimum((cdf <= (rng.random(len(logits)) * cdf[:, -1])[:, None]).sum(-1), VOCAB - 1)
    return nxt.tolist(), logp[np.arange(len(nxt)), nxt].tolist()


def apart(prompts, n, max_new, seed):
    """The reference: one row per sample, every live sample drawing in sample order."""
    rng = np.random.default_rng(seed)
    hist = [list(p) for p in prompts for _ in range(n)]
    gen = [[] for _ in hist]
    live = list(range(len(hist)))
    for _ in range(max_new):
        if not live:
            break
        toks, _ = draw(np.stack([toy_logits(hist[s]) for s in live]), rng, 1.0)
        still = []
        for s, t in zip(live, toks):
            gen[s].append(t)
            hist[s].append(t)
            if t not in (EOS, MARK):
                still.append(s)
        live = still
    return [gen[k * n:(k + 1) * n] for k in range(len(prompts))]


def run(dec, prompts, n, max_new, **kw):
    return sample_tree(dec, prompts, n, max_new, dec.temperature <= 0, lambda ids: " ".join(map(str, ids)),
                       EOS, {MARK}, **kw)


PROMPTS = [[1, 2], [3], [4, 4, 1]]


def test_tree_gives_the_samples_of_decoding_apart_with_fewer_rows():
    for seed in range(5):
        dec = ToyRows("sample", seed)
        out = run(dec, PROMPTS, 8, 12)
        assert [[c.token_ids for c in comps] for comps in out] == apart(PROMPTS, 8, 12, seed)
        assert max(dec.widths) <= 3 * 8 and sum(dec.widths) < 3 * 8 * len(dec.widths)
        for comps in out:
            for c in comps:
                assert c.finish == ("eos" if c.token_ids[-1] == EOS else "stop" if c.token_ids[-1] == MARK
                                    else "length")
                assert len(c.token_logprobs) == len(c.token_ids) and c.text == " ".join(map(str, c.token_ids))


def test_rows_are_distinct_live_prefixes_and_groups_respect_limits():
    dec = ToyRows("row", 3)
    seen = []
    step = dec.step

    def checked(parents, tokens):
        logits = step(parents, tokens)
        assert len({tuple(r) for r in dec.rows}) == len(dec.rows)  # one row per distinct prefix
        seen.append(len(dec.rows))
        return logits

    dec.step = checked
    out = run(dec, PROMPTS, 5, 10, max_samples=4, max_prompts=1)
    assert [len(c) for c in out] == [5, 5, 5]
    assert dec.released == 6  # groups: 4+1 samples per prompt (at most 4 samples, 1 prompt each)
    assert max(seen) <= 4


def test_greedy_decodes_one_row_per_prompt_and_copies_it():
    dec = ToyRows("row", 0, temperature=0.0)
    out = run(dec, PROMPTS, 4, 6)
    assert set(dec.widths) <= {1, 2, 3}
    for comps in out:
        assert len(comps) == 4 and all(c.token_ids == comps[0].token_ids for c in comps)
        assert len({id(c.token_ids) for c in comps}) == 4  # copies, not one shared list


def test_no_new_tokens_gives_empty_length_completions():
    dec = ToyRows("sample", 0)
    out = run(dec, PROMPTS, 2, 0)
    assert all(c.token_ids == [] and c.finish == "length" for comps in out for c in comps) and dec.released == 1


def test_beam_search_over_rows():
    for width in (1, 2, 4):
        dec = ToyRows("row", 0)
        beams = beam_search(dec, [1, 2], width, 12, lambda ids: str(ids), EOS, {MARK})
        assert len(beams) == width and dec.released == 1
        means = [b.mean_logprob for b in beams]
        assert means == sorted(means, reverse=True)
        assert max(dec.widths) <= width
        for b in beams:  # each beam's log-probs are its tokens' under the toy model
            hist = [1, 2]
            for tok, lp in zip(b.token_ids, b.token_logprobs):
                assert abs(dec.logprobs(toy_logits(hist)[None])[0, tok] - lp) < 1e-6
                hist.append(tok)
            assert b.finish == ("eos" if b.token_ids[-1] == EOS else "stop" if b.token_ids[-1] == MARK else "length")
    greedy = run(ToyRows("row", 0, temperature=0.0), [[1, 2]], 1, 12)[0][0]
    assert beam_search(ToyRows("row", 0), [1, 2], 1, 12, str, EOS, {MARK})[0].token_ids == greedy.token_ids
