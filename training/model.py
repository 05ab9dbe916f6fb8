"""Model shapes: small Llama-architecture causal LMs built from scratch for our vocabulary."""

from __future__ import annotations

from pathlib import Path

SIZES = {
    # name: (hidden, layers, heads, intermediate)
    "tiny": (32, 2, 2, 64),        # tests: trains in seconds
    "small": (256, 4, 4, 768),     # ~3.4M parameters: the default (768 = 3 x 256: K-quants fit)
    "medium": (384, 6, 6, 1024),   # ~10M parameters
    "large": (512, 8, 8, 1408),    # ~25M parameters
}


def new_model(tokenizer, size: str = "small", max_positions: int = 256, seed: int = 0):
    """A freshly initialised ``LlamaForCausalLM`` sized for the protocol tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}")
    hidden, layers, heads, inter = SIZES[size]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def save_model(model, tokenizer, out_dir: Path | str) -> Path:
    """Write a standard HF model directory (config, safetensors, tokenizer, generation config)."""
    from transformers import GenerationConfig

    from sbt_core.backends.torch_backend import quiet_transformers

    quiet_transformers()  # no "Writing model shards" bar in the training log
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, max_new_tokens=96, do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True, max_shard_size="15MB")
    tokenizer.save_pretrained(out)
    return out
