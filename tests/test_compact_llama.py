"""compact_llama against transformers' LlamaForCausalLM: same weights, same logits."""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sbt_core.backends.compact_llama import CompactLlama, unsupported_reason  # noqa: E402
from sbt_core.backends.torch_backend import TorchBackend  # noqa: E402
from sbt_core.countdown import Puzzle  # noqa: E402
from sbt_core.tokenizer import build_tokenizer  # noqa: E402
from sbt_core.trace import prompt  # noqa: E402
from training.model import save_model  # noqa: E402

TOK = build_tokenizer()


def _llama(tmp_path, name, **overrides):
    cfg = dict(vocab_size=len(TOK), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=4, intermediate_size=64, max_position_embeddings=128,
               rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=TOK.bos_token_id,
               eos_token_id=TOK.eos_token_id, pad_token_id=TOK.pad_token_id)
    cfg.update(overrides)
    torch.manual_seed(3)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    with torch.no_grad():  # non-trivial norms, so a misplaced norm weight shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    return model.eval(), save_model(model, TOK, tmp_path / name)


SHAPES = [
    ("tied-mha", {}),
    ("untied-gqa-bias", {"tie_word_embeddings": False, "num_key_value_heads": 2, "attention_bias": True,
                         "rope_theta": 500.0}),
]


@pytest.mark.parametrize("name,overrides", SHAPES)
def test_logits_match_transformers_with_padding_and_cache(tmp_path, name, overrides):
    ref, folder = _llama(tmp_path, name, **overrides)
    assert unsupported_reason(folder) is None
    ours = CompactLlama.from_dir(folder)
    rows = [TOK(prompt(Puzzle((3, 4, 5, 7), 41)))["input_ids"], TOK("7 * 3 = 21\n")["input_ids"]]
    width = max(map(len, rows))
    ids = torch.full((2, width), TOK.pad_token_id)
    mask = torch.zeros((2, width), dtype=torch.long)
    for i, r in enumerate(rows):  # left padding, as the sampler does
        ids[i, width - len(r):], mask[i, width - len(r):] = torch.tensor(r), 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        cache = ours.new_cache(capacity=width)  # the decode steps below grow it
        got = ours(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache).logits
        assert torch.allclose(got[mask.bool()], want[mask.bool()], atol=1e-5)
        # two decode steps through the cache == one pass over the longer sequence
        step = torch.tensor([[5], [6]])
        for k in range(2):
            mask = torch.cat([mask, torch.ones((2, 1), dtype=torch.long)], 1)
            pos = pos[:, -1:] + 1
            got = ours(input_ids=step, attention_mask=mask, position_ids=pos, past_key_values=cache).logits
            ids = torch.cat([ids, step], 1)
        full = ref(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
        assert torch.allclose(got[:, -1], full[:, -1], atol=1e-5)


def test_backend_uses_compact_model_and_agrees_with_transformers_route(tmp_path, monkeypatch):
    _, folder = _llama(tmp_path, "m")
    fast = TorchBackend(folder)
    assert isinstance(fast.model, CompactLlama)
    monkeypatch.setenv("SBT_TORCH_IMPL", "transformers")
    slow = TorchBackend(folder)
    assert not isinstance(slow.model, CompactLlama)
    prompts = [prompt(Puzzle((3, 4, 5, 7), 41)), prompt(Puzzle((2, 3, 5), 30))]
    a, b = fast.sample(prompts, 3, 1.0, 20, seed=4), slow.sample(prompts, 3, 1.0, 20, seed=4)
    assert [[c.token_ids for c in row] for row in a] == [[c.token_ids for c in row] for row in b]
    for ra, rb in zip(a, b):
        for ca, cb in zip(ra, rb):
            assert ca.token_logprobs == pytest.approx(cb.token_logprobs, abs=1e-4)
    assert [c.text for c in fast.beam(prompts[0], 2, 12)] == [c.text for c in slow.beam(prompts[0], 2, 12)]


def test_other_architectures_fall_back_to_transformers(tmp_path, monkeypatch):
    _, folder = _llama(tmp_path, "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    (folder / "config.json").write_text(json.dumps(cfg))
    assert unsupported_reason(folder) == "rope scaling"
    assert not isinstance(TorchBackend(folder).model, CompactLlama)
    monkeypatch.setenv("SBT_TORCH_IMPL", "compact")
    from sbt_core.errors import SbtError

    with pytest.raises(SbtError, match="rope scaling"):
        TorchBackend(folder)
