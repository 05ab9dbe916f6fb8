"""The torch backend on a tiny random model built here (no downloads, no trained weights)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

torch = pytest.importorskip("torch")

from sbt_core.backends import load_backend  # noqa: E402
from sbt_core.backends.torch_backend import TorchBackend  # noqa: E402
from sbt_core.countdown import Puzzle  # noqa: E402
from sbt_core.errors import SbtError  # noqa: E402
from sbt_core.models import model_sha256, resolve_model  # noqa: E402
from sbt_core.search import METHODS, run_search  # noqa: E402
from sbt_core.tokenizer import build_tokenizer  # noqa: E402
from sbt_core.trace import BACKTRACK, GOAL, prompt  # noqa: E402
from training.model import new_model, save_model  # noqa: E402
from _backend_contract import assert_completions_follow_contract, forward_logprobs

P = Puzzle((3, 4, 5, 7), 41)
PROMPTS = [prompt(P), prompt(P) + "7 * 3 = 21\n", prompt(Puzzle((2, 3, 5), 30))]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = build_tokenizer()
    return save_model(new_model(tok, "tiny", seed=1), tok, tmp_path_factory.mktemp("m") / "tiny-model")


@pytest.fixture(scope="module")
def backend(model_dir):
    return TorchBackend(model_dir)


def test_sample_shapes_and_finish(backend):
    out = backend.sample(PROMPTS, 3, 1.0, 12, seed=0)
    assert_completions_follow_contract(backend, out, 3, 3, 12)
    assert backend.sample([], 3, 1.0, 5, 0) == [] and backend.sample(PROMPTS[:1], 0, 1.0, 5, 0) == [[]]


def test_same_seed_same_samples_other_seed_differs(backend):
    a = backend.sample(PROMPTS, 4, 1.0, 16, seed=7)
    b = backend.sample(PROMPTS, 4, 1.0, 16, seed=7)
    c = backend.sample(PROMPTS, 4, 1.0, 16, seed=8)
    key = lambda out: [[x.token_ids for x in comps] for comps in out]  # noqa: E731
    assert key(a) == key(b) and key(a) != key(c)


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (2.5, 5), (0.0, None)])
def test_logprobs_are_untempered_and_match_a_forward_pass(backend, temperature, top_k):
    out = backend.sample(PROMPTS, 2, temperature, 10, seed=3, top_k=top_k)
    for text, comps in zip(PROMPTS, out):
        for c in comps:
            assert c.token_logprobs == pytest.approx(forward_logprobs(backend, text, c.token_ids), abs=1e-4)


def test_greedy_is_argmax_and_identical_across_samples(backend):
    (a, b), = backend.sample(PROMPTS[:1], 2, 0.0, 8, seed=0)
    assert a.token_ids == b.token_ids
    head = backend._prompt_ids(PROMPTS[0])
    with torch.no_grad():
        logits = backend.model(input_ids=torch.tensor([head + a.token_ids])).logits[0]
    assert logits[len(head) - 1:-1].argmax(-1).tolist()[: len(a.token_ids)] == a.token_ids


def test_text_decodes_generated_tokens_and_score_matches(backend):
    for c in backend.sample(PROMPTS[:1], 4, 1.0, 12, seed=1)[0]:
        ids = [t for t in c.token_ids if t != backend.eos_id]
        assert c.text == backend.tokenizer.decode(ids)
    text = "7 * 3 = 21\n5 * 4 = 20\n21 + 20 = 41\n" + GOAL
    ids = backend.encode(text)
    assert backend.score(PROMPTS[0], text) == pytest.approx(forward_logprobs(backend, PROMPTS[0], ids), abs=1e-4)
    assert backend.score(PROMPTS[0], "") == []


def _biased(backend, token_id):
    bias = torch.zeros(len(backend.tokenizer))
    bias[token_id] = 100.0
    return backend.model.lm_head.register_forward_hook(lambda mod, inp, out: out + bias)


@pytest.mark.parametrize("token,finish", [(GOAL, "stop"), (BACKTRACK, "stop"), ("<eos>", "eos")])
def test_generation_stops_at_markers_and_end_token(backend, token, finish):
    handle = _biased(backend, backend.tokenizer.convert_tokens_to_ids(token))
    try:
        for c in backend.sample(PROMPTS[:2], 2, 1.0, 20, seed=0)[0]:
            assert c.finish == finish and len(c.token_ids) == 1
            assert c.text == ("" if token == "<eos>" else token)
    finally:
        handle.remove()


def test_stop_at_line(backend):
    handle = _biased(backend, backend.tokenizer.convert_tokens_to_ids("\n"))
    try:
        (c,), = backend.sample(PROMPTS[:1], 1, 1.0, 20, seed=0, stop_at_line=True)
        assert c.text == "\n" and c.finish == "stop"
        (c,), = backend.sample(PROMPTS[:1], 1, 1.0, 5, seed=0)
        assert c.text == "\n" * 5 and c.finish == "length"
    finally:
        handle.remove()


def test_beam_returns_width_beams_with_true_logprobs(backend):
    beams = backend.beam(PROMPTS[0], 3, 8)
    assert len(beams) == 3
    for c in beams:
        assert c.token_logprobs == pytest.approx(forward_logprobs(backend, PROMPTS[0], c.token_ids), abs=1e-4)


class _ForwardRows:
    """A reference ``decoding.Decoder`` for beam search: every step one plain forward pass of
    each row's whole text (no cache, no padding)."""

    draw_order = "row"

    def __init__(self, backend):
        self.b = backend

    def _logits(self):
        with torch.no_grad():
            return torch.stack([self.b.model(input_ids=torch.tensor([r])).logits[0, -1].float() for r in self.rows])

    def prefill(self, prompts):
        self.rows = [list(p) for p in prompts]
        return self._logits()

    def step(self, parents, tokens):
        self.rows = [self.rows[p] + [t] for p, t in zip(parents, tokens)]
        return self._logits()

    def logprobs(self, logits):
        return torch.log_softmax(logits, -1).numpy()

    def release(self):
        self.rows = []


@pytest.mark.parametrize("width", [1, 2, 4])
def test_beam_is_the_decoding_core_beam_over_the_kv_cache(model_dir, width, monkeypatch):
    """The torch beam is ``decoding.beam_search`` (the llama.cpp backend's beam), run over
    the KV cache, not transformers' ``generate`` with its own scoring and a second copy of
    the weights (issue 21): the same beams as the reference decoder, and no model loaded."""
    from sbt_core.backends import torch_backend
    from sbt_core.backends.decoding import beam_search

    backend = TorchBackend(model_dir)  # (its own: nothing loaded for an earlier test's beam)
    monkeypatch.setattr(torch_backend, "load_hf_model", lambda *a: pytest.fail("beam loaded a second model"))
    for text in PROMPTS:
        want = beam_search(_ForwardRows(backend), backend._prompt_ids(text), width, 14, backend._decode,
                           backend.eos_id, backend.marker_ids)
        got = backend.beam(text, width, 14)
        assert [c.token_ids for c in got] == [c.token_ids for c in want]
        assert [c.finish for c in got] == [c.finish for c in want]
        for g, w in zip(got, want):
            assert g.token_logprobs == pytest.approx(w.token_logprobs, abs=1e-4)


@pytest.mark.parametrize("method", [m for m, spec in METHODS.items() if spec.needs_model])
def test_strategies_run_on_a_real_model_and_are_reproducible(backend, method):
    params = {"n": 2, "b": 1, "width": 2, "nodes": 3, "max_new_tokens": 16}
    a = run_search(method, P, backend, params, seed=5)
    b = run_search(method, P, backend, params, seed=5)
    assert (a.lines, a.score, a.stats.tokens) == (b.lines, b.score, b.stats.tokens)
    assert a.stats.model_calls >= 1 and a.stats.tokens > 0 and a.stats.expansions >= 1
    assert a.solved == bool(a.verdict)  # a random model: judged by the verifier either way


def test_load_backend_by_name_and_sha(model_dir, monkeypatch):
    monkeypatch.setenv("SBT_MODELS_DIR", str(model_dir.parent))
    assert resolve_model("tiny-model") == model_dir.resolve()
    b = load_backend("tiny-model")
    assert b.backend_name == "torch" and b.model_name == "tiny-model"
    assert b.model_sha256 == model_sha256(model_dir) and len(b.model_sha256) == 64


def test_broken_model_dirs_are_one_line_errors(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SBT_MODELS_DIR", str(tmp_path))
    with pytest.raises(SbtError, match="not found"):
        load_backend(None, n_numbers=4)
    with pytest.raises(SbtError, match="llama backend"):
        load_backend(str(model_dir), backend="llama")
    with pytest.raises(SbtError, match="unknown backend"):
        load_backend(str(model_dir), backend="onnx")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    with pytest.raises(SbtError, match="no weights"):
        resolve_model(_without(broken, "*.safetensors"))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in model_dir.iterdir():
        data = f.read_bytes()
        (corrupt / f.name).write_bytes(b"garbage" * 10 if f.suffix == ".safetensors" else data)
    with pytest.raises(SbtError) as err:
        load_backend(str(corrupt))
    assert "\n" not in str(err.value) and "cannot load model" in str(err.value)


def _without(path, pattern):
    for f in path.glob(pattern):
        f.unlink()
    return str(path)


def test_length_never_runs_past_the_model_positions(backend):
    handle = _biased(backend, backend.tokenizer.convert_tokens_to_ids("1"))
    try:
        (c,), = backend.sample(PROMPTS[:1], 1, 1.0, 10_000, seed=0)
    finally:
        handle.remove()
    room = backend.model.config.max_position_embeddings - len(backend._prompt_ids(PROMPTS[0]))
    assert c.finish == "length" and len(c.token_ids) == room


def test_model_calls_run_on_the_inference_threads_and_restore_torch_count(model_dir, monkeypatch):
    monkeypatch.delenv("SBT_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    tb = TorchBackend(model_dir)
    assert tb.threads == 1  # a small model: 1 thread unless asked
    seen, step = [], tb._step
    monkeypatch.setattr(tb, "_step", lambda *a: (seen.append(torch.get_num_threads()), step(*a))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # e.g. a training loop's own setting
    try:
        tb.sample(PROMPTS[:1], 2, 1.0, 4, seed=0)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv("SBT_NUM_THREADS", "2")
    assert TorchBackend.from_model(tb.model, tb.tokenizer).threads == 2


def test_inference_threads_defaults(monkeypatch):
    from sbt_core.backends.base import inference_threads
    from sbt_core.settings import BackendOptions

    monkeypatch.delenv("SBT_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert inference_threads(3_000_000) == 1
    assert inference_threads(200_000_000) is None  # large: the library's default
    assert inference_threads(200_000_000, 3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # the environment is read by the settings, not here
    assert inference_threads(3_000_000) == 1
    assert inference_threads(3_000_000, BackendOptions.from_env().threads) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "zero")
    assert inference_threads(3_000_000, BackendOptions.from_env().threads) == 1


def test_options_reach_the_model_and_are_recorded_as_resolved(model_dir, monkeypatch):
    from sbt_core.settings import BackendOptions

    for k in ("SBT_DTYPE", "SBT_DEVICE", "SBT_TORCH_IMPL"):
        monkeypatch.delenv(k, raising=False)
    plain = TorchBackend(model_dir)
    assert plain.options.identity("torch") == {} and next(plain.model.parameters()).dtype == torch.float32
    bf = TorchBackend(model_dir, BackendOptions(dtype="bf16", threads=2))
    assert next(bf.model.parameters()).dtype == torch.bfloat16 and bf.threads == 2
    assert bf.options.identity("torch") == {"dtype": "bfloat16"}
    monkeypatch.setenv("SBT_DTYPE", "bfloat16")  # the environment is the fallback...
    assert load_backend(str(model_dir)).options.identity("torch") == {"dtype": "bfloat16"}
    assert next(TorchBackend(model_dir, BackendOptions()).model.parameters()).dtype == torch.float32  # ...options win
    # the implementation and the device as resolved: asking for what "auto" picks is the default
    assert TorchBackend(model_dir, BackendOptions(torch_impl="compact")).options.identity("torch") == {}
    hf = TorchBackend(model_dir, BackendOptions(torch_impl="transformers"))
    assert hf.options.identity("torch") == {"torch_impl": "transformers"}
    if not torch.cuda.is_available():
        assert TorchBackend(model_dir, BackendOptions(device="auto")).options.identity("torch") == {}
        with pytest.raises(SbtError, match="no CUDA device"):
            TorchBackend(model_dir, BackendOptions(device="cuda"))
