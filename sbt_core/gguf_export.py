"""Export a model directory (HF Llama, our tokenizer) to a GGUF file for llama.cpp.

The GGUF is what llama.cpp's own ``convert_hf_to_gguf.py`` writes for a ``LlamaForCausalLM``:

- architecture ``llama`` with its hyper-parameters (context length, sizes, heads, RMS-norm
  epsilon, rope base and dimension);
- tensors named as llama.cpp expects (``token_embd``, ``blk.N.attn_q`` ...), each HF
  ``[out, in]`` matrix written as is (GGUF lists the dimensions the other way round);
- the q and k projections permuted from HF's "rotate halves" rope layout to the
  interleaved pairs that llama.cpp's normal rope uses (``LlamaModel.permute``);
- tied embeddings: no ``output.weight`` is written, so llama.cpp falls back to
  ``token_embd.weight`` for the output projection (an untied model's ``lm_head`` is written
  as ``output.weight``);
- the vocabulary: tokenizer model ``none`` with ``llama.vocab_size`` set, so llama.cpp
  makes that many placeholder tokens and never tokenizes. Token ids are ours: our
  tokenizer (``tokenizer.json`` beside the GGUF, and a copy embedded as the ``sbt.tokenizer``
  metadata string) encodes and decodes, llama.cpp only sees ids.

``f32`` and ``f16`` are written here with the ``gguf`` package (pure Python); ``q8_0``,
``q4_0`` and ``q4_k_m`` are made from a temporary f32 GGUF by llama.cpp's own quantizer
(``llama_model_quantize`` through llama-cpp-python). Quantized types need every
quantized row (the input dimension of each matrix) to be a multiple of the type's block:
32 for q8_0/q4_0, 256 for the K-quants; otherwise the export is refused (one line) unless
``allow_fallback`` lets llama.cpp store the odd tensors in a compatible type.

Nothing here imports torch or llama_cpp at module level; weights are read from the
safetensors files with numpy.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path

import numpy as np

from .countdown import shorten
from .errors import SbtError
from .files import write_atomic

QUANTS = ("f32", "f16", "q8_0", "q4_0", "q4_k_m")
# llama_ftype values (llama.h) and the row block each quant type needs
FTYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "q4_k_m": 15}
BLOCK = {"f32": 1, "f16": 1, "q8_0": 32, "q4_0": 32, "q4_k_m": 256}
TOKENIZER_KEY = "sbt.tokenizer"
SOURCE_KEY = "sbt.source_sha256"
QUANT_KEY = "sbt.quant"

_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


def default_out(model_dir: Path, quant: str) -> Path:
    """Where an export goes by default: ``MODEL_DIR/model-QUANT.gguf`` (beside the tokenizer)."""
    return Path(model_dir) / f"model-{quant}.gguf"


# -- reading the checkpoint -------------------------------------------------------------------
def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of one safetensors file as float32 numpy arrays (bf16 included; no torch).
    A file that is not valid safetensors (random, truncated, offsets outside it) is one
    ``SbtError`` naming it."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise SbtError(f"cannot read weights {path}: {exc.strerror or exc}") from None
    try:
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
    except (struct.error, ValueError) as exc:
        raise SbtError(f"cannot read weights {path}: not a safetensors file ({exc})") from None
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
            if dtype is None:
                raise SbtError(f"cannot export {path.name}: tensor {name} has dtype {info['dtype']}")
            a, b = info["data_offsets"]
            if not 0 <= a <= b or base + b > len(raw):
                raise ValueError(f"tensor {name} lies outside the file (truncated?)")
            arr = np.frombuffer(raw, dtype=dtype, count=(b - a) // np.dtype(dtype).itemsize, offset=base + a)
            if info["dtype"] == "BF16":
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            out[name] = arr.astype(np.float32).reshape(info["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SbtError(f"cannot read weights {path}: not a valid safetensors file ({type(exc).__name__}: "
                           f"{shorten(str(exc), 120)})") from None
    return out


def check_architecture(config: dict) -> None:
    """Only Llama-architecture models without biases export (one line otherwise)."""
    archs = config.get("architectures") or ["LlamaForCausalLM"]
    arch = archs[0] if isinstance(archs, list) and archs else archs
    if config.get("model_type") != "llama" and arch != "LlamaForCausalLM":
        raise SbtError(f"cannot export a {arch} model: only Llama-architecture models are supported")
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            raise SbtError(f"cannot export: {key} is not supported")


def read_checkpoint(model_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """config.json and the tensors of a Llama model directory. The config's values and the
    weight files' headers are checked against each other before any tensor is read."""
    from .models import check_llama_weights, check_model_dir, read_config, safetensors_files

    check_model_dir(model_dir)
    config = read_config(model_dir)
    files = safetensors_files(model_dir)
    if not files:
        raise SbtError(f"cannot export {model_dir}: only *.safetensors weights are supported")
    check_architecture(config)
    check_llama_weights(model_dir, config)
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        tensors.update(read_safetensors(f))
    return config, tensors


# -- HF -> GGUF --------------------------------------------------------------------------------
def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF q/k rows (halves rotated) -> llama.cpp rows (pairs rotated), as convert_hf_to_gguf.py."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_tensors(config: dict, hf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The GGUF tensors (llama.cpp names and layout, float32) of an HF Llama checkpoint."""
    check_architecture(config)
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    out = {"token_embd.weight": hf["model.embed_tokens.weight"], "output_norm.weight": hf["model.norm.weight"]}
    if "lm_head.weight" in hf and not config.get("tie_word_embeddings", False):
        out["output.weight"] = hf["lm_head.weight"]
    for i in range(config["num_hidden_layers"]):
        for src, dst in LAYER_NAMES.items():
            key = f"model.layers.{i}.{src}"
            if key not in hf:
                raise SbtError(f"cannot export: tensor {key} is missing from the checkpoint")
            w = hf[key]
            if src.startswith("self_attn.q_proj"):
                w = permute_qk(w, n_head)
            elif src.startswith("self_attn.k_proj"):
                w = permute_qk(w, n_kv)
            out[f"blk.{i}.{dst}"] = w
    return out


def check_quant(quant: str, tensors: dict[str, np.ndarray], allow_fallback: bool = False) -> list[str]:
    """Names of the matrices whose rows do not fit ``quant``'s block; raise unless allowed."""
    if quant not in QUANTS:
        raise SbtError(f"unknown quant {quant!r}; choose one of: {', '.join(QUANTS)}")
    block = BLOCK[quant]
    bad = [f"{n} (rows of {t.shape[-1]})" for n, t in tensors.items() if t.ndim == 2 and t.shape[-1] % block]
    if bad and not allow_fallback:
        raise SbtError(
            f"cannot quantize to {quant}: it needs row lengths that are multiples of {block}, and "
            f"{len(bad)} tensor(s) are not: {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}; "
            f"use {'q8_0 or q4_0' if block > 32 else 'f16 or f32'}"
            + (" (or --allow-fallback: llama.cpp then stores those tensors in a compatible type)" if block > 32 else ""))
    return bad


def write_gguf(config: dict, tensors: dict[str, np.ndarray], out: Path, *, float_type: str = "f32",
               name: str = "model", tokenizer_json: str | None = None, source_sha256: str = "",
               quant: str | None = None) -> Path:
    """Write an f32 or f16 GGUF (1-D tensors stay f32, as llama.cpp's converter does)."""
    try:
        import gguf
    except ImportError:
        raise SbtError("exporting a GGUF needs the gguf package: pip install 'sbt[llama]' (or pip install gguf)") from None

    hidden, n_head = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // n_head
    vocab = tensors["token_embd.weight"].shape[0]
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(name)
    w.add_context_length(int(config.get("max_position_embeddings", 2048)))
    w.add_embedding_length(hidden)
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(config.get("num_key_value_heads") or n_head)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    rope = config.get("rope_parameters") or {}
    w.add_rope_freq_base(float(config.get("rope_theta") or rope.get("rope_theta") or 10000.0))
    scaling = config.get("rope_scaling") or {}
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise SbtError(f"cannot export: rope scaling {scaling} is not supported")
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    w.add_vocab_size(vocab)
    w.add_file_type(FTYPES[float_type])
    # no vocabulary for llama.cpp: it makes `vocab_size` placeholder tokens and never tokenizes
    w.add_tokenizer_model("none")
    if tokenizer_json:
        w.add_string(TOKENIZER_KEY, tokenizer_json)
    if source_sha256:
        w.add_string(SOURCE_KEY, source_sha256)
    w.add_string(QUANT_KEY, quant or float_type)
    for key in ("bos", "eos", "pad"):  # our special ids (llama.cpp ignores them without a vocab)
        if isinstance(config.get(f"{key}_token_id"), int):
            w.add_uint32(f"sbt.{key}_token_id", config[f"{key}_token_id"])
    for tname, arr in tensors.items():
        if float_type == "f16" and arr.ndim == 2:
            w.add_tensor(tname, np.ascontiguousarray(arr, dtype=np.float16))
        else:
            w.add_tensor(tname, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def quantize(src: Path, dst: Path, quant: str, threads: int = 1) -> None:
    """llama.cpp's own quantizer (llama_model_quantize) from an f32/f16 GGUF."""
    from .backends.llama_backend import import_llama_cpp

    llama_cpp = import_llama_cpp(needed_for=f"quantizing to {quant}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[quant]
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise SbtError(f"llama.cpp could not quantize {src.name} to {quant} (llama_model_quantize returned {rc})")


def export_gguf(model_dir: str | os.PathLike, quant: str = "q8_0", out: str | os.PathLike | None = None,
                allow_fallback: bool = False, threads: int = 1, overwrite: bool = False) -> Path:
    """Export ``model_dir`` to a GGUF of type ``quant``; returns the file written.

    The default ``out`` is ``model_dir/model-QUANT.gguf``, beside the tokenizer that the
    llama backend uses to encode and decode. An existing ``out`` is refused (one line)
    unless ``overwrite``. The output's lock (``sbt_core.locks.output_lock``) is held while
    it is written, so two exports never write one file; the GGUF is written to a temporary
    file beside ``out`` and renamed into place when complete. Every failure to write is one
    line naming ``out`` (never the temporary file).
    """
    from .locks import output_lock
    from .models import model_sha256

    if quant not in QUANTS:
        raise SbtError(f"unknown quant {quant!r}; choose one of: {', '.join(QUANTS)}")
    model_dir = Path(model_dir)
    out = Path(out) if out else default_out(model_dir, quant)
    _check_out(out, overwrite)  # before the weights are read: a refusal costs nothing
    config, hf = read_checkpoint(model_dir)
    tensors = gguf_tensors(config, hf)
    check_quant(quant, tensors, allow_fallback)
    tok = model_dir / "tokenizer.json"
    meta = dict(name=model_dir.name, tokenizer_json=tok.read_text() if tok.is_file() else None,
                source_sha256=model_sha256(model_dir))
    created = not out.parent.exists()
    try:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SbtError(f"cannot write --out {out}: cannot create its folder ({exc.strerror or exc})") from None
        with output_lock(out, is_dir=False, what="--out"):
            _check_out(out, overwrite)  # again, under the lock: another export may have finished meanwhile
            write_atomic(out, lambda tmp: _write_quant(config, tensors, tmp, quant, threads, meta))
    except SbtError:
        if created:  # leave no empty folder behind a refused or failed export
            with contextlib.suppress(OSError):
                out.parent.rmdir()
        raise
    return out


def _check_out(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise SbtError(f"--out {out} is a directory; give a .gguf file name")
    if out.exists() and not overwrite:
        raise SbtError(f"{out} already exists; pass --overwrite to replace it (or --out another file)")


def _write_quant(config: dict, tensors: dict[str, np.ndarray], tmp: Path, quant: str, threads: int, meta: dict) -> None:
    if quant in ("f32", "f16"):
        write_gguf(config, tensors, tmp, float_type=quant, **meta)
        return
    f32 = Path(str(tmp) + ".f32")
    try:
        write_gguf(config, tensors, f32, float_type="f32", quant=quant, **meta)
        quantize(f32, tmp, quant, threads)
    finally:
        f32.unlink(missing_ok=True)


