"""Bring your own model (issue 22, item 1): any local Hugging Face causal LM as a base.

Two tiny base models are built here (no network): a GPT-2 with a byte-level BPE tokenizer
trained on protocol text (multi-digit number pieces, no bos added) and a Llama with a
SentencePiece-style tokenizer (Metaspace BPE whose pieces run across newlines, a bos
added). ``sbt train --base-model`` fine-tunes each (fully, and with ``--lora 4``: an
adapter directory, and merged); the loss masks are exact; ``sbt solve`` / ``sbt bench``
run on the results; the transformers decoder's seeded samples equal a plain step-by-step
decode; plain transformers loads what was trained; bad input is one line, exit 2.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
from typer.testing import CliRunner

from sbt_cli.app import app
from sbt_core.countdown import Puzzle
from sbt_core.settings import BackendOptions
from sbt_core.trace import BACKTRACK, prompt, render_solution

from _train_fixtures import quick_countdown3
from _cli import one_error_line

runner = CliRunner()
TRAIN = ["--numbers", "3", "--tokens", "2500", "--batch-size", "8", "--eval-puzzles", "2", "--eval-every", "1000",
         "--lr", "1e-3", "--threads", "1", "--precision", "fp32", "--compile", "off", "--quiet"]


def protocol_texts(n: int = 300) -> list[str]:
    from sbt_core.solver import random_solution

    rng, out = random.Random(0), []
    while len(out) < n:
        p = Puzzle(tuple(rng.randint(1, 99) for _ in range(rng.choice((3, 4)))), rng.randint(10, 300))
        path = random_solution(p, rng)
        if path:
            out.append(prompt(p) + render_solution(path))
    return out


def save_gpt2(folder, texts):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=400, min_frequency=2, special_tokens=["<|endoftext|>"], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    config = GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=2, n_positions=256, bos_token_id=0,
                        eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_llama(folder, texts):
    from tokenizers import SentencePieceBPETokenizer, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(texts, vocab_size=400, min_frequency=2, special_tokens=["<unk>", "<s>", "</s>"],
                           show_progress=False)
    sp._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                                 special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=sp._tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    root, texts = tmp_path_factory.mktemp("bases"), protocol_texts()
    return {"gpt2": save_gpt2(root / "gpt2", texts), "llama": save_llama(root / "llama", texts),
            "qwen2": save_qwen2(root / "qwen2", root / "llama")}


def save_qwen2(folder, tokenizer_from):
    """A Qwen2 with sliding-window attention (window 8, shorter than the prompts) and the
    Llama's tokenizer: a third architecture, run as a base model without training."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         use_sliding_window=True, sliding_window=8, max_window_layers=1)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (folder / f).write_bytes((tokenizer_from / f).read_bytes())
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return quick_countdown3(tmp_path_factory, "hf", 24)


def train(base, out, data_dir, *extra):
    r = runner.invoke(app, ["train", "--base-model", str(base), "--out", str(out), "--data-dir", str(data_dir),
                            *TRAIN, *extra])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def trained(bases, data_dir, tmp_path_factory):
    """The trained directories: each base fully fine-tuned, GPT-2 with --lora 4 (an adapter
    directory), Llama with --lora 4 --merge."""
    root = tmp_path_factory.mktemp("trained")
    return {"gpt2": train(bases["gpt2"], root / "gpt2-ft", data_dir),
            "llama": train(bases["llama"], root / "llama-ft", data_dir),
            "gpt2-lora": train(bases["gpt2"], root / "gpt2-lora", data_dir, "--lora", "4"),
            "llama-merged": train(bases["llama"], root / "llama-merged", data_dir, "--lora", "4", "--merge")}


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_loss_masks_are_exact_whatever_the_tokenizer(name, trained):
    from transformers import AutoTokenizer

    from sbt_core.hf import special_prefix
    from sbt_core.solver import is_solvable
    from training.data import (Recipe, build_examples, encode, tokens_on_cuts, trained_text,
                               trained_tokens_text)

    tok = AutoTokenizer.from_pretrained(trained[name])  # the tokenizer training used (<backtrack> added)
    rng, puzzles = random.Random(1), []
    while len(puzzles) < 40:
        p = Puzzle(tuple(rng.randint(1, 99) for _ in range(4)), rng.randint(10, 200))
        puzzles += [p] if is_solvable(p.numbers, p.target) else []
    examples = list(build_examples(puzzles, Recipe(honest_last=1.0), 0))
    assert {"op", "exploration", "computational", "rule", "goal-claim", "honest-last"} <= {e.kind for e in examples}
    recut = 0
    for ex in examples:
        ids, labels = encode(ex, tok)
        want = trained_text(ex)
        want[-1] += tok.eos_token  # (the end token is trained)
        assert trained_tokens_text(tok, ids, labels) == want, (ex.kind, ex.text)
        assert ids[:len(special_prefix(tok))] == special_prefix(tok)
        assert tok.decode(ids[len(special_prefix(tok)):-1]) == ex.text
        recut += tokens_on_cuts(ex, tok)[0] != tok(ex.text, add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([i]).strip() for i in range(len(tok))]
    assert any(p.isdigit() and len(p) > 1 for p in pieces)  # numbers come in multi-digit pieces
    if name == "gpt2":  # no bos added by the base, none invented; " 12" cut after an honest-last's masked " = "
        assert special_prefix(tok) == [] and 0 < recut < len(examples)
    else:  # a bos added by the base, kept; pieces run across the prompt's end: the prompt is cut as inference cuts it
        assert special_prefix(tok) == [tok.bos_token_id] and recut == len(examples)
    back = tok.convert_tokens_to_ids(BACKTRACK)
    assert tok("5 + 3 = 8\n" + BACKTRACK, add_special_tokens=False)["input_ids"][-1] == back
    assert tok.convert_ids_to_tokens(back) == BACKTRACK and back >= len(tok) - 1


# --------------------------------------------------------------------------- the trained directories


def test_trained_dirs_load_with_plain_transformers_and_record_their_base(trained, bases):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ("gpt2", "llama", "llama-merged"):
        model = AutoModelForCausalLM.from_pretrained(trained[name])
        tok = AutoTokenizer.from_pretrained(trained[name])
        base_tok = AutoTokenizer.from_pretrained(bases[name.split("-")[0]])
        assert model.get_input_embeddings().num_embeddings == len(tok) == len(base_tok) + 1
        plain = tok("2 + 3 = 5\n", add_special_tokens=False)["input_ids"]
        assert tok("2 + 3 = 5\n")["input_ids"][:-len(plain)] == base_tok("2 + 3 = 5\n")["input_ids"][:-len(plain)]
        with torch.no_grad():
            assert torch.isfinite(model(**tok("###Response:\n", return_tensors="pt")).logits).all()
        info = json.loads((trained[name] / "training.json").read_text())
        base = info["base_model"]
        assert base["path"] == str(bases[name.split("-")[0]].resolve()) and len(base["sha256"]) == 64
        assert base["added_tokens"] == [BACKTRACK] and info["versions"]["sbt"]
        assert info["config"]["preset"] == "sbt" and info["data"]["recipe"]["data"] == "op+back"
        card = (trained[name] / "README.md").read_text()
        assert f"fine-tuned from `{bases[name.split('-')[0]]}`" in card and "sbt 0.1.0" in card
    info = json.loads((trained["llama-merged"] / "training.json").read_text())
    assert info["base_model"]["lora"]["merged"] and info["base_model"]["lora"]["r"] == 4


@pytest.mark.parametrize("name", ["gpt2", "llama", "gpt2-lora"])
def test_card_snippet_generates_what_sbt_greedy_generates(name, trained):
    # the card's plain-transformers lines (peft for the adapter), run as written: the tokenizer
    # puts in front of the prompt what training did, so generate's greedy tokens are sbt's
    import contextlib
    import io
    import re

    from sbt_core.backends.torch_backend import TorchBackend
    from training.model_card import SNIPPET_MARK

    card = (trained[name] / "README.md").read_text()
    code = re.search(re.escape(SNIPPET_MARK) + r"\n```python\n(.*?)```", card, re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"{name}/README.md", "exec"), {})
    question = re.search(r'tok\("(###Question: .*?)", return_tensors', code).group(1).replace("\\n", "\n")
    ours = TorchBackend(trained[name]).sample([question], 1, 0.0, 96, 0)[0][0]
    assert ours.text and out.getvalue().startswith(ours.text), (out.getvalue(), ours.text)


def test_base_gets_backtrack_as_one_special_token_with_mean_rows(bases, tmp_path):
    import torch

    from training.base_model import load_base
    from training.config import TrainConfig

    cfg = TrainConfig(out=str(tmp_path / "o"), data_dir=str(tmp_path), base_model=str(bases["llama"]))
    tok, model, info = load_base(cfg, log=lambda m: None)
    bt = tok.convert_tokens_to_ids(BACKTRACK)
    assert info["added_tokens"] == [BACKTRACK] and bt == info["vocab"] == len(tok) - 1
    assert tok.pad_token == tok.eos_token == "</s>" and tok.bos_token == "<s>"  # (no new pad or bos)
    head, emb = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert head is not emb  # an untied head: its new row is the mean too
    for w in (emb, head):
        assert torch.allclose(w[bt], w[:bt].mean(0), atol=1e-6)
    assert model.config.eos_token_id == tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id


def test_lora_adapter_dir_is_an_adapter_sbt_loads_merged(trained, bases):
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sbt_core.backends.torch_backend import TorchBackend
    from sbt_core.models import model_sha256, resolve_model

    ad = trained["gpt2-lora"]
    assert (ad / "adapter_config.json").is_file() and not (ad / "config.json").exists()
    assert json.loads((ad / "adapter_config.json").read_text())["base_model_name_or_path"] == str(bases["gpt2"].resolve())
    with safe_open(str(ad / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("lora_A" in k for k in keys) and any("trainable_tokens" in k for k in keys)
    assert resolve_model(str(ad)) == ad.resolve() and len(model_sha256(ad)) == 64
    backend = TorchBackend(ad)
    tok = AutoTokenizer.from_pretrained(ad)
    base = AutoModelForCausalLM.from_pretrained(bases["gpt2"])
    base.resize_token_embeddings(len(tok))
    by_hand = PeftModel.from_pretrained(base, str(ad)).eval()
    ids = torch.tensor([tok("###Question: numbers [2, 3, 5]->target 30\n###Response:\n5 * 3 = 15\n" + BACKTRACK,
                            add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(backend.model(input_ids=ids).logits, by_hand(input_ids=ids).logits, atol=1e-5)
    assert backend.marker_ids == {tok.convert_tokens_to_ids(BACKTRACK)} and backend.bos_ids == []


# --------------------------------------------------------------------------- sbt solve / bench


@pytest.mark.parametrize("name", ["gpt2", "llama", "gpt2-lora", "llama-merged", "qwen2"])
def test_sbt_solve_runs_on_the_trained_dir(name, trained, bases):
    folder = {**trained, "qwen2": bases["qwen2"]}[name]  # (an untrained Qwen2: any architecture runs)
    r = runner.invoke(app, ["solve", "2 3 5 -> 30", "--model", str(folder), "--n", "2", "--b", "1",
                            "--json", "--seed", "3"])
    assert r.exit_code in (0, 1), r.output
    out = json.loads(r.stdout)
    assert out["model"] == folder.name and out["backend"] == "torch" and out["stats"]["tokens"] > 0


def test_sbt_bench_stores_a_row(trained, data_dir, tmp_path):
    db = tmp_path / "r.db"
    models = f"{trained['gpt2']},{trained['gpt2-lora']}"
    r = runner.invoke(app, ["bench", "--model", models, "--data", str(data_dir), "--split", "test_new", "--limit", "2",
                            "--methods", "greedy", "--db", str(db), "--quiet", "--numbers", "3"])
    assert r.exit_code == 0, r.output
    with sqlite3.connect(db) as c:
        runs = c.execute("select id, model, model_sha256, status from runs").fetchall()
        assert {m for _, m, _, _ in runs} == {"gpt2-ft", "gpt2-lora"} and all(s == "done" for *_, s in runs)
        assert c.execute("select count(*) from results").fetchone()[0] == 4


# --------------------------------------------------------------------------- the transformers decoder


def reference_samples(backend, prompts: list[str], n: int, temperature: float, max_new: int, seed: int):
    """Each sample decoded on its own by full forward passes (no cache, no padding, no tree);
    the draws as the decoder makes them: every step, one draw per live sample, in sample order."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    heads = [backend._prompt_ids(p) for p in prompts]
    samples = [(k, []) for k in range(len(prompts)) for _ in range(n)]
    ends = {backend.eos_id, *backend.marker_ids}
    live = list(range(len(samples)))
    with torch.no_grad():
        for _ in range(max_new):
            if not live:
                break
            logits = torch.stack([backend.model(input_ids=torch.tensor([heads[samples[s][0]] + samples[s][1]]))
                                  .logits[0, -1].float() for s in live])
            nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen).squeeze(-1).tolist()
            for s, t in zip(live, nxt):
                samples[s][1].append(t)
            live = [s for s in live if samples[s][1][-1] not in ends]
    return [[ids for k2, ids in samples if k2 == k] for k in range(len(prompts))]


@pytest.mark.parametrize("name", ["gpt2", "llama", "gpt2-lora", "qwen2"])
def test_transformers_decoder_samples_equal_a_step_by_step_decode(name, trained, bases):
    from sbt_core.backends.torch_backend import TorchBackend

    backend = TorchBackend({**trained, "qwen2": bases["qwen2"]}[name], BackendOptions(torch_impl="transformers"))
    assert type(backend.model).__module__.startswith("transformers.")  # (the llama too: not the compact path)
    prompts = ["###Question: numbers [2, 3, 5]->target 30\n###Response:\n",
               "###Question: numbers [12, 7, 40, 3]->target 91\n###Response:\n40 + 12 = 52\n"]
    got = backend.sample(prompts, 3, 1.0, 20, seed=7)
    want = reference_samples(backend, prompts, 3, 1.0, 20, seed=7)
    assert [[c.token_ids for c in row] for row in got] == want
    assert len({tuple(c.token_ids) for row in got for c in row}) > 1  # real samples, not one copied
    for row in got:  # log-probs of the untempered distribution, as score() gives them
        for c in row:
            assert c.token_logprobs == pytest.approx(backend._token_logprobs(prompts[got.index(row)], c.token_ids),
                                                     abs=1e-4)
    again = backend.sample(prompts, 3, 1.0, 20, seed=7)
    assert [[c.token_ids for c in row] for row in again] == want
    assert len(backend.beam(prompts[0], 2, 6)) == 2


# --------------------------------------------------------------------------- bad input: one line, exit 2


def test_bad_base_models_are_one_line_exit_2(bases, data_dir, tmp_path, monkeypatch):
    import importlib.util

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    def run(base, *extra):
        return runner.invoke(app, ["train", "--base-model", str(base), "--out", str(tmp_path / "out"),
                                   "--data-dir", str(data_dir), *TRAIN, *extra])

    one_error_line(run(tmp_path / "nope"), "--base-model", "no such directory")
    bert = tmp_path / "bert"  # an encoder: not a causal LM
    BertForMaskedLM(BertConfig(vocab_size=400, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(bert)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (bert / f).write_bytes((bases["gpt2"] / f).read_bytes())
    one_error_line(run(bert), "not a causal language model", "BertForMaskedLM")
    no_slash = tmp_path / "no-slash"  # a tokenizer without "/": cannot encode the protocol
    vocab = {c: i for i, c in enumerate(["<unk>", "<eos>", *sorted(set("".join(protocol_texts(20))) - {"/"})])}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    t.decoder = decoders.Fuse()
    PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<eos>", unk_token="<unk>").save_pretrained(no_slash)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_embd=16, n_layer=1, n_head=2)).save_pretrained(no_slash)
    one_error_line(run(no_slash), "cannot encode sbt's protocol text", "/")
    pickled = tmp_path / "pickled"  # weights only as a pickle: refused, never loaded
    pickled.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (pickled / f).write_bytes((bases["gpt2"] / f).read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    one_error_line(run(pickled), "pickle", "pytorch_model.bin")
    one_error_line(runner.invoke(app, ["solve", "2 3 5 -> 30", "--model", str(pickled)]), "pickle")
    one_error_line(run(bases["gpt2"], "--merge"), "--merge", "--lora")
    one_error_line(runner.invoke(app, ["train", "--out", str(tmp_path / "o2"), "--data-dir", str(data_dir), "--lora", "4",
                                       *TRAIN]), "--lora", "--base-model")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else find_spec(name, *a))
    one_error_line(run(bases["gpt2"], "--lora", "4"), "peft", "pip install 'sbt[hf]'")
    assert not (tmp_path / "out").exists()  # nothing was written


def test_adapter_whose_base_is_gone_is_one_line(trained, tmp_path):
    moved = tmp_path / "adapter"
    moved.mkdir()
    for f in trained["gpt2-lora"].iterdir():
        if f.is_file():
            (moved / f.name).write_bytes(f.read_bytes())
    config = json.loads((moved / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "gone")}))
    one_error_line(runner.invoke(app, ["solve", "2 3 5 -> 30", "--model", str(moved)]), "base model", "not a local")
