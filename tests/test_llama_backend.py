"""The llama.cpp backend against the torch backend, on a tiny random model exported here."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")
torch = pytest.importorskip("torch")

from sbt_core.backends import load_backend  # noqa: E402
from sbt_core.backends.base import FINISH_REASONS  # noqa: E402
from sbt_core.backends.llama_backend import LlamaBackend  # noqa: E402
from sbt_core.backends.torch_backend import TorchBackend  # noqa: E402
from sbt_core.countdown import Puzzle  # noqa: E402
from sbt_core.errors import SbtError  # noqa: E402
from sbt_core.gguf_export import export_gguf  # noqa: E402
from sbt_core.search import METHODS, run_search  # noqa: E402
from sbt_core.tokenizer import build_tokenizer  # noqa: E402
from sbt_core.trace import prompt  # noqa: E402
from training.model import new_model, save_model  # noqa: E402
from _backend_contract import assert_completions_follow_contract, forward_logprobs

P = Puzzle((3, 4, 5, 7), 41)
PROMPTS = [prompt(P), prompt(P) + "7 * 3 = 21\n", prompt(Puzzle((2, 3, 5), 30)), prompt(Puzzle((12, 9, 40, 2), 66))]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = build_tokenizer()
    model = new_model(tok, "tiny", seed=1)
    with torch.no_grad():  # sharper than a fresh init: fewer near-ties between the top tokens
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(8.0)
    d = save_model(model, tok, tmp_path_factory.mktemp("l") / "tiny-model")
    for q in ("f32", "f16", "q8_0"):
        export_gguf(d, q)
    return d


@pytest.fixture(scope="module")
def torch_backend(model_dir):
    return TorchBackend(model_dir)


@pytest.fixture(scope="module")
def f32(model_dir):
    return LlamaBackend(model_dir, quant="f32")


def ids(out):
    return [[c.token_ids for c in comps] for comps in out]


def test_loads_with_protocol_attributes(model_dir, f32):
    b = load_backend(str(model_dir), "llama")
    assert b.backend_name == "llama" and b.quant == "q8_0"  # q8_0 by default
    assert b.model_name == "tiny-model" and len(b.model_sha256) == 64
    assert f32.quant == "f32" and f32.model_sha256 != b.model_sha256
    assert f32.vocab_size == len(build_tokenizer())
    assert load_backend(str(model_dir / "model-f16.gguf"), "llama").quant == "f16"


def test_greedy_identical_to_torch_f32(torch_backend, f32):
    a = torch_backend.sample(PROMPTS, 2, 0.0, 48, seed=0)
    b = f32.sample(PROMPTS, 2, 0.0, 48, seed=0)
    assert ids(a) == ids(b)
    assert [[c.text for c in x] for x in a] == [[c.text for c in x] for x in b]
    assert [[c.finish for c in x] for x in a] == [[c.finish for c in x] for x in b]
    for x, y in zip(a, b):
        assert y[0].token_logprobs == pytest.approx(x[0].token_logprobs, abs=1e-4)


def test_f16_close_and_q8_mostly_agrees(model_dir, torch_backend):
    a = torch_backend.sample(PROMPTS, 1, 0.0, 32, seed=0)
    f16 = LlamaBackend(model_dir, quant="f16")
    b = f16.sample(PROMPTS, 1, 0.0, 32, seed=0)
    for x, y in zip(a, b):  # same tokens up to the first near-tie at most
        assert y[0].token_logprobs[:4] == pytest.approx(x[0].token_logprobs[:4], abs=2e-2)
    same = sum(x[0].token_ids == y[0].token_ids for x, y in zip(a, b))
    assert same >= len(PROMPTS) - 1
    q8 = LlamaBackend(model_dir)
    agree = total = 0
    for text, comps in zip(PROMPTS, a):  # q8_0: argmax agreement along torch's greedy path
        tokens = comps[0].token_ids
        got = q8.position_logits(text, tokens)
        head = torch_backend._prompt_ids(text)
        with torch.no_grad():
            ref = torch_backend.model(input_ids=torch.tensor([head + tokens])).logits[0, len(head) - 1:-1]
        agree += int((got.argmax(-1) == ref.argmax(-1).numpy()).sum())
        total += len(tokens)
        assert q8.score(text, torch_backend._decode(tokens)) == pytest.approx(
            forward_logprobs(torch_backend, text, tokens)[:len(q8.encode(torch_backend._decode(tokens)))], abs=0.3)
    assert agree / total >= 0.9


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (2.5, 5), (0.7, 3)])
def test_sample_logprobs_untempered_and_match_torch(torch_backend, f32, temperature, top_k):
    out = f32.sample(PROMPTS, 3, temperature, 20, seed=5, top_k=top_k)
    for text, comps in zip(PROMPTS, out):
        for c in comps:
            assert c.token_logprobs == pytest.approx(forward_logprobs(torch_backend, text, c.token_ids), abs=1e-4)
            if top_k:  # every sampled token is among the top k of the raw logits
                head = torch_backend._prompt_ids(text)
                with torch.no_grad():
                    logits = torch_backend.model(input_ids=torch.tensor([head + c.token_ids])).logits[0]
                rows = logits[len(head) - 1:-1]
                ranks = (rows > rows.gather(-1, torch.tensor(c.token_ids)[:, None])).sum(-1)
                assert int(ranks.max()) < top_k


def test_sample_shapes_finish_and_stops(f32):
    out = f32.sample(PROMPTS, 3, 1.0, 12, seed=0)
    assert_completions_follow_contract(f32, out, len(PROMPTS), 3, 12)
    lines = f32.sample(PROMPTS, 4, 1.5, 40, seed=1, stop_at_line=True)
    for comps in lines:
        for c in comps:
            assert "\n" not in c.text[:-1]
            if c.finish == "stop" and c.token_ids[-1] not in f32.marker_ids:
                assert c.text.endswith("\n")
    assert f32.sample([], 3, 1.0, 5, 0) == [] and f32.sample(PROMPTS[:1], 0, 1.0, 5, 0) == [[]]


def test_same_seed_same_samples_other_seed_differs(f32):
    a = f32.sample(PROMPTS, 4, 1.0, 16, seed=7)
    b = f32.sample(PROMPTS, 4, 1.0, 16, seed=7)
    c = f32.sample(PROMPTS, 4, 1.0, 16, seed=8)
    assert ids(a) == ids(b) and ids(a) != ids(c)


def test_max_new_tokens_never_passes_the_context(f32):
    out = f32.sample([PROMPTS[0]], 1, 0.0, 10_000, seed=0)
    assert len(out[0][0].token_ids) <= f32.n_ctx_train - len(f32._prompt_ids(PROMPTS[0]))


def test_prefix_reuse_and_rollback_give_fresh_results(model_dir, torch_backend):
    """A long-lived backend (cached prefixes, truncated and shared slots, small groups)
    answers exactly like a fresh one for every call."""
    used = LlamaBackend(model_dir, quant="f32", seqs=4, slots=2)
    calls = [
        ("sample", PROMPTS[:2], 3), ("score", PROMPTS[0], "7 * 3 = 21\n4 + 5 = 9\n"),
        ("sample", [PROMPTS[0] + "7 * 3 = 21\n4 + 5 = 9\n"], 2), ("sample", PROMPTS[::-1], 2),
        ("score", PROMPTS[1], "4 * 5 = 20\n"), ("sample", [PROMPTS[1]], 5), ("score", PROMPTS[0], "7 * 3 = 21\n"),
        ("sample", [PROMPTS[0] + "7 * 3 = 21\n"], 1), ("sample", PROMPTS, 1),
    ]
    for kind, arg, extra in calls:
        fresh = LlamaBackend(model_dir, quant="f32", seqs=4, slots=2)
        if kind == "score":
            got, want = used.score(arg, extra), fresh.score(arg, extra)
            assert got == pytest.approx(want, abs=1e-5)
            assert got == pytest.approx(forward_logprobs(torch_backend, arg, used.encode(extra)), abs=1e-4)
        else:
            got, want = used.sample(arg, extra, 0.0, 24, seed=0), fresh.sample(arg, extra, 0.0, 24, seed=0)
            assert ids(got) == ids(want)
            got, want = used.sample(arg, extra, 1.0, 24, seed=3), fresh.sample(arg, extra, 1.0, 24, seed=3)
            assert ids(got) == ids(want)
    # the cache is used: scoring a state and then expanding it decodes only one prompt token
    before = used.n_decoded
    used.score(PROMPTS[2], "5 * 3 = 15\n")
    mid = used.n_decoded
    used.sample([PROMPTS[2] + "5 * 3 = 15\n"], 1, 0.0, 1, seed=0)
    assert used.n_decoded - mid == 1 and mid - before <= len(used.encode("5 * 3 = 15\n")) + 1


def test_many_prompts_and_samples_in_groups(model_dir, f32):
    small = LlamaBackend(model_dir, quant="f32", seqs=5, slots=2)
    a = small.sample(PROMPTS, 7, 0.0, 16, seed=0)
    assert ids(a) == ids(f32.sample(PROMPTS, 7, 0.0, 16, seed=0))
    b = small.sample(PROMPTS, 7, 1.0, 16, seed=4)
    assert [len(x) for x in b] == [7] * len(PROMPTS)


def test_beam(f32, torch_backend):
    beams = f32.beam(PROMPTS[0], 3, 20)
    assert len(beams) == 3
    means = [c.mean_logprob for c in beams]
    assert means == sorted(means, reverse=True)
    for c in beams:
        assert c.finish in FINISH_REASONS
        assert c.token_logprobs == pytest.approx(forward_logprobs(torch_backend, PROMPTS[0], c.token_ids), abs=1e-4)
    greedy = f32.sample([PROMPTS[0]], 1, 0.0, 20, seed=0)[0][0]
    assert f32.beam(PROMPTS[0], 1, 20)[0].token_ids == greedy.token_ids


def test_search_methods_run(f32):
    for method in ("self-backtrack", "greedy", "beam", "best-of-n"):
        res = run_search(method, P, f32, {"n": 4, "b": 1, "width": 2, "max_new_tokens": 24}, seed=1)
        assert res.method == method
    a = run_search("self-backtrack", P, f32, {"n": 4, "max_new_tokens": 24}, seed=2)
    b = run_search("self-backtrack", P, f32, {"n": 4, "max_new_tokens": 24}, seed=2)
    assert (a.lines, a.score, a.stats.tokens) == (b.lines, b.score, b.stats.tokens)
    assert METHODS["self-backtrack"].needs_model


def test_bad_files_one_line_errors(model_dir, tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    trunc = tmp_path / "trunc" / "model-q8_0.gguf"
    trunc.parent.mkdir()
    data = (model_dir / "model-q8_0.gguf").read_bytes()
    trunc.write_bytes(data[: len(data) // 2])
    (trunc.parent / "tokenizer.json").write_bytes((model_dir / "tokenizer.json").read_bytes())
    empty = tmp_path / "empty"
    empty.mkdir()
    for path, words in [(junk, "not a GGUF"), (trunc, "cannot load GGUF"), (empty, "sbt export gguf"),
                        (tmp_path / "missing", "not found")]:
        with pytest.raises(SbtError) as err:
            load_backend(str(path), "llama")
        assert words in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SbtError, match="no f16 GGUF"):
        LlamaBackend(trunc.parent, quant="f16")


def test_solve_cli_without_torch(model_dir):
    code = ("import sys, json; from sbt_cli.app import _main as main; sys.argv = ['sbt', 'solve', '2 3 5 -> 30', '--backend', "
            f"'llama', '--model', {str(model_dir)!r}, '--n', '4', '--json']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr); sys.exit(code)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode in (0, 1), r.stderr
    out = json.loads(r.stdout)
    assert out["backend"] == "llama" and out["model"] == "tiny-model"
    assert "NO-TORCH" in r.stderr and "Traceback" not in r.stderr


def test_identical_samples_share_one_sequence(f32):
    """Samples with the same tokens so far are decoded once (the sampling tree)."""
    greedy = f32.sample([PROMPTS[2]], 1, 0.0, 30, seed=0)[0][0]
    before = f32.n_decoded
    out = f32.sample([PROMPTS[2]], 16, 1e-4, 30, seed=0)[0]  # so peaked that all 16 agree
    assert all(c.token_ids == greedy.token_ids for c in out)
    assert f32.n_decoded - before <= len(greedy.token_ids) + 1
    before = f32.n_decoded
    spread = f32.sample([PROMPTS[2]], 16, 1.0, 30, seed=0)[0]
    assert f32.n_decoded - before <= sum(c.n_tokens for c in spread) + 1


def test_options_pick_the_gguf_and_are_recorded_as_resolved(model_dir, f32, monkeypatch):
    from sbt_core.settings import BackendOptions

    assert f32.options.flash_attn is None and f32.options.identity("llama") == {}  # off: the f32 default
    monkeypatch.setenv("SBT_LLAMA_QUANT", "f16")  # the environment is the fallback...
    assert load_backend(str(model_dir), "llama").quant == "f16"
    tuned = load_backend(str(model_dir), "llama", options=BackendOptions(quant="f32", seqs=4, slots=2))  # ...options win
    assert tuned.quant == "f32" and (tuned.S, tuned.P) == (4, 2)
    assert tuned.options.identity("llama") == {"seqs": 4, "slots": 2}
    flash = LlamaBackend(model_dir, BackendOptions(flash_attn=True), quant="f32", seqs=4, slots=2)
    assert flash.options.identity("llama") == {"seqs": 4, "slots": 2, "flash_attn": True}
    q8 = LlamaBackend(model_dir, BackendOptions(flash_attn=True), quant="q8_0", seqs=4, slots=2)
    assert q8.options.flash_attn is None  # on is the default of a quantized GGUF
