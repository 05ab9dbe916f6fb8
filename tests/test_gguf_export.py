"""GGUF export of a tiny random model (no downloads); quantization needs llama-cpp-python."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import importlib.util  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

gguf = pytest.importorskip("gguf")
pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from sbt_cli.app import app  # noqa: E402
from sbt_core.errors import SbtError  # noqa: E402
from sbt_core.gguf_export import (  # noqa: E402
    TOKENIZER_KEY, check_quant, export_gguf, gguf_tensors, permute_qk, read_checkpoint,
)
from sbt_core.tokenizer import build_tokenizer  # noqa: E402
from training.model import new_model, save_model  # noqa: E402

HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = build_tokenizer()
    return save_model(new_model(tok, "tiny", seed=1), tok, tmp_path_factory.mktemp("g") / "tiny-model")


def field_value(reader, key):
    f = reader.fields[key]
    return f.contents() if hasattr(f, "contents") else f.parts[f.data[0]]


@pytest.mark.parametrize("quant,dtype", [("f32", "F32"), ("f16", "F16")])
def test_export_float_layout_and_metadata(model_dir, tmp_path, quant, dtype):
    out = export_gguf(model_dir, quant, tmp_path / f"m-{quant}.gguf")
    r = gguf.GGUFReader(out)
    cfg = json.loads((model_dir / "config.json").read_text())
    tensors = {t.name: t for t in r.tensors}
    # tied embeddings: no output.weight, llama.cpp falls back to token_embd
    assert "output.weight" not in tensors
    assert len(tensors) == 2 + 9 * cfg["num_hidden_layers"]
    emb = tensors["token_embd.weight"]
    assert list(map(int, emb.shape)) == [cfg["hidden_size"], cfg["vocab_size"]]  # GGUF order: ne0 first
    assert emb.tensor_type.name == dtype and tensors["output_norm.weight"].tensor_type.name == "F32"
    assert list(map(int, tensors["blk.0.ffn_down.weight"].shape)) == [cfg["intermediate_size"], cfg["hidden_size"]]
    assert field_value(r, "general.architecture") == "llama"
    assert field_value(r, "tokenizer.ggml.model") == "none"
    assert int(field_value(r, "llama.vocab_size")) == cfg["vocab_size"] == len(build_tokenizer())
    assert int(field_value(r, "llama.context_length")) == cfg["max_position_embeddings"]
    assert int(field_value(r, "llama.attention.head_count")) == cfg["num_attention_heads"]
    assert json.loads(field_value(r, TOKENIZER_KEY))["model"]["type"] == "WordLevel"
    assert oct(out.stat().st_mode & 0o777) != "0o600"


def test_qk_permutation_matches_llama_cpp_converter(model_dir):
    config, hf = read_checkpoint(model_dir)
    g = gguf_tensors(config, hf)
    n_head = config["num_attention_heads"]
    q = hf["model.layers.0.self_attn.q_proj.weight"]
    # convert_hf_to_gguf.py LlamaModel.permute, written out
    d = q.shape[0] // n_head
    ref = q.reshape(n_head, 2, d // 2, -1).swapaxes(1, 2).reshape(q.shape)
    assert np.array_equal(g["blk.0.attn_q.weight"], ref)
    # within a head, row 2i is HF row i and row 2i+1 is HF row i + d/2 (rope pairs)
    assert np.array_equal(g["blk.0.attn_q.weight"][1], q[d // 2])
    assert np.array_equal(g["blk.0.attn_v.weight"], hf["model.layers.0.self_attn.v_proj.weight"])
    assert np.array_equal(permute_qk(q, n_head)[0::2][: d // 2], q[: d // 2])


def test_refuses_quant_that_does_not_fit(model_dir, tmp_path):
    with pytest.raises(SbtError) as err:
        export_gguf(model_dir, "q4_k_m", tmp_path / "x.gguf")
    msg = str(err.value)
    assert "\n" not in msg and "multiples of 256" in msg and "q8_0" in msg
    assert not (tmp_path / "x.gguf").exists()
    with pytest.raises(SbtError, match="unknown quant"):
        export_gguf(model_dir, "q3_k", tmp_path / "x.gguf")
    config, hf = read_checkpoint(model_dir)
    assert check_quant("q8_0", gguf_tensors(config, hf)) == []  # hidden 32: q8_0 fits


def test_corrupt_weights_one_line(model_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in model_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "model.safetensors").write_bytes(b"\x05\x00garbage")
    with pytest.raises(SbtError) as err:
        export_gguf(bad, "f16")
    assert "\n" not in str(err.value) and "safetensors" in str(err.value)


def test_cli_export(model_dir, tmp_path):
    r = CliRunner().invoke(app, ["export", "gguf", str(model_dir), "--quant", "f16", "--out", str(tmp_path / "c.gguf")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "c.gguf").is_file() and "wrote" in r.output
    r = CliRunner().invoke(app, ["export", "gguf", str(model_dir), "--quant", "q4_k_m", "--out", str(tmp_path / "k.gguf")])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot quantize to q4_k_m")
    r = CliRunner().invoke(app, ["export", "gguf", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "not found" in r.output


@pytest.mark.skipif(not HAVE_LLAMA, reason="llama-cpp-python not installed")
@pytest.mark.parametrize("quant,types", [("q8_0", {"Q8_0"}), ("q4_0", {"Q4_0", "Q8_0", "Q6_K"})])
def test_quantize_with_llama_cpp(model_dir, tmp_path, quant, types):
    out = export_gguf(model_dir, quant, tmp_path / f"m-{quant}.gguf")
    r = gguf.GGUFReader(out)
    kinds = {t.tensor_type.name for t in r.tensors if len(t.shape) == 2}
    assert kinds <= types and kinds & {quant.upper()}
    assert field_value(r, "tokenizer.ggml.model") == "none"
    assert not list(tmp_path.glob(".*"))  # no temporary files left


@pytest.mark.skipif(not HAVE_LLAMA, reason="llama-cpp-python not installed")
def test_allow_fallback_lets_llama_cpp_pick(model_dir, tmp_path):
    out = export_gguf(model_dir, "q4_k_m", tmp_path / "k.gguf", allow_fallback=True)
    kinds = {t.tensor_type.name for t in gguf.GGUFReader(out).tensors if len(t.shape) == 2}
    assert kinds and not any(k.endswith("_K") for k in kinds)  # rows of 32: no K-quant fits
