"""Llama inference in plain torch, for fast start-up.

Importing ``transformers`` pulls in torch._dynamo, torch.distributed, sympy and scipy:
about 3 s on these CPUs, more than `sbt solve` is allowed in total. Our models are plain
Llamas (RMSNorm, rotary positions, SwiGLU, tied or untied head), so the torch backend
runs them with this module instead: the same parameter names and the same maths as
``transformers.LlamaForCausalLM`` (tests pin the logits to it), loaded straight from the
safetensors files. Anything it does not cover (another architecture, rope scaling, a
.bin checkpoint) goes through transformers as before; ``SBT_TORCH_IMPL=transformers``
forces that route.

The call signature follows the transformers model (``input_ids``, ``attention_mask``,
``position_ids``, ``past_key_values``, ``logits_to_keep``; returns an object with
``.logits``) and ``KVCache`` has the batch operation our sampler uses
(``batch_select_indices``, as transformers' caches), so one sampling loop serves both.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn


def unsupported_reason(folder: Path) -> str | None:
    """Why this model directory cannot run here (None: it can)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return "no readable config.json"
    if not isinstance(config, dict):
        return "config.json is not a JSON object"
    if config.get("model_type") != "llama":
        return f"model_type {config.get('model_type')!r} is not llama"
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if (rope.get("rope_type") or rope.get("type") or "default") != "default":
        return "rope scaling"
    if config.get("hidden_act", "silu") != "silu" or config.get("pretraining_tp", 1) != 1:
        return "activation or tensor-parallel layout"
    if not _weight_files(folder):
        return "no safetensors weights"
    return None


def _weight_files(folder: Path) -> list[Path]:
    """The index's files, else ``model.safetensors``, else none (not every ``*.safetensors``:
    transformers would not load those either)."""
    from ..models import safetensors_files

    index = folder / "model.safetensors.index.json"
    return safetensors_files(folder) if index.is_file() or (folder / "model.safetensors").is_file() else []


class KVCache:
    """Keys and values per layer in preallocated buffers, shape (batch, kv_heads, capacity,
    head_dim); the first ``length()`` positions are filled. A decode step writes one
    position in place instead of concatenating (which copied the whole cache every token);
    the buffers grow (doubling) if a call runs past ``capacity``."""

    def __init__(self, n_layers: int, capacity: int = 0) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.capacity = capacity
        self._used = 0

    def length(self) -> int:
        return self._used

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``/``v`` after the filled positions; the filled keys and values so far.
        The model calls ``advance`` once all layers have written."""
        start, end = self._used, self._used + k.shape[2]
        if self.keys[layer] is None or end > self.keys[layer].shape[2]:
            self.keys[layer] = self._grown(self.keys[layer], k, end)
            self.values[layer] = self._grown(self.values[layer], v, end)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, t: int) -> None:
        self._used += t

    def _grown(self, old: torch.Tensor | None, like: torch.Tensor, needed: int) -> torch.Tensor:
        size = max(needed, self.capacity, 2 * old.shape[2] if old is not None else 0)
        buf = like.new_empty((like.shape[0], like.shape[1], size, like.shape[3]))
        if old is not None:
            buf[:, :, :self._used] = old[:, :, :self._used]
        return buf

    def batch_select_indices(self, idx: torch.Tensor) -> None:
        """Keep (and repeat) the rows ``idx``: new buffers of the same capacity, only the
        filled positions copied."""
        for store in (self.keys, self.values):
            for i, buf in enumerate(store):
                new = buf.new_empty((len(idx), *buf.shape[1:]))
                new[:, :, :self._used] = buf[:, :, :self._used].index_select(0, idx)
                store[i] = new


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, c: SimpleNamespace) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        bias = c.attention_bias
        self.q_proj = nn.Linear(c.hidden_size, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(c.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(c.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, c.hidden_size, bias=bias)

    def forward(self, x, cos, sin, mask, cache: KVCache | None, layer: int) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(layer, k, v)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, c: SimpleNamespace) -> None:
        super().__init__()
        bias = c.mlp_bias
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c: SimpleNamespace) -> None:
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache, layer):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    def __init__(self, c: SimpleNamespace) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


def _config(raw: dict) -> SimpleNamespace:
    c = dict(raw)
    c.setdefault("num_key_value_heads", c["num_attention_heads"])
    c["head_dim"] = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    c.setdefault("attention_bias", False)
    c.setdefault("mlp_bias", False)
    c.setdefault("rms_norm_eps", 1e-6)
    c.setdefault("tie_word_embeddings", False)
    rope = c.get("rope_parameters") or {}
    c["rope_theta"] = rope.get("rope_theta", c.get("rope_theta", 10000.0))
    return SimpleNamespace(**c)


def _inv_freq(c: SimpleNamespace) -> torch.Tensor:
    exponents = torch.arange(0, c.head_dim, 2, dtype=torch.int64).float() / c.head_dim
    return 1.0 / (c.rope_theta ** exponents)


class CompactLlama(nn.Module):
    """``LlamaForCausalLM`` for inference: same weights, same logits, light imports."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.config = c = _config(config)
        self.model = Body(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        if c.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", _inv_freq(c), persistent=False)

    @classmethod
    def from_dir(cls, folder: str | Path, dtype: torch.dtype = torch.float32) -> "CompactLlama":
        from safetensors.torch import load_file

        from ..models import check_llama_weights, read_config

        folder = Path(folder)
        config = read_config(folder)
        check_llama_weights(folder, config)  # from the headers, before anything is allocated
        model = cls(config)  # (not on "meta": that imports dynamo)
        state: dict[str, torch.Tensor] = {}
        for f in _weight_files(folder):
            state.update(load_file(str(f)))
        if model.config.tie_word_embeddings and "model.embed_tokens.weight" in state:
            state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
        model.load_state_dict(state, strict=True, assign=True)
        if model.config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        model = model.to(dtype).eval()
        model.inv_freq = _inv_freq(model.config)  # rotary frequencies stay float32 in any dtype
        return model

    def new_cache(self, capacity: int = 0) -> KVCache:
        """An empty cache; ``capacity`` positions are allocated at the first write."""
        return KVCache(len(self.model.layers), capacity)

    def _rotary(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[:, :, None].float() * self.inv_freq.float()[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (batch, 1, seq, head_dim)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values: KVCache | None = None,
                use_cache: bool = True, logits_to_keep: int = 0) -> SimpleNamespace:
        b, t = input_ids.shape
        past = past_key_values.length() if past_key_values is not None else 0
        total = past + t
        device = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones((b, total), dtype=torch.long, device=device)
        if position_ids is None:
            position_ids = torch.arange(past, total, device=device)[None].expand(b, t)
        q_pos = torch.arange(past, total, device=device)[:, None]
        k_pos = torch.arange(total, device=device)[None, :]
        # causal and not padding; a query always sees itself, so padded rows stay finite
        mask = ((k_pos <= q_pos)[None, None] & attention_mask.bool()[:, None, None, :]) | (k_pos == q_pos)
        x = self.model.embed_tokens(input_ids)
        cos, sin = self._rotary(position_ids, x.dtype)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, mask, past_key_values, i)
        if past_key_values is not None:
            past_key_values.advance(t)
        x = self.model.norm(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        return SimpleNamespace(logits=self.lm_head(x))
