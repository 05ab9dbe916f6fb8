"""Training tokens/s on this machine: the fp32 padded baseline vs sbt's choice, in one run.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_train_speed.py [--steps 15] [--size small]

Baseline: fp32, sdpa attention, fixed-width padded batches of 64 x 64.
sbt: bf16 autocast (AMX), eager attention (CPU flash-attention backward is slow at these
lengths), length-bucketed batches of 256 padded to a multiple of 8.
Tokens/s counts real (non-padding) tokens. Prints a ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from sbt_core.generate import GeneratorConfig, generate_split
from sbt_core.countdown import Puzzle
from sbt_core.tokenizer import build_tokenizer
from training.batches import EncodedDataset, collate, iterate
from training.data import Recipe, build_examples, encode
from training.model import new_model


def measure(data, tok, *, size, batch, bf16, attn, fixed_width, steps, warmup=3) -> float:
    model = new_model(tok, size)
    model.set_attn_implementation(attn)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    it = iterate(data, batch, seed=0)
    tokens, t0 = 0, 0.0
    for i in range(steps + warmup):
        if i == warmup:
            tokens, t0 = 0, time.perf_counter()
        _, _, b = next(it)
        inputs = collate(data, b, tok.pad_token_id, multiple=fixed_width or 8)
        if fixed_width:
            inputs = {k: v[:, :fixed_width] for k, v in inputs.items()}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(inputs["attention_mask"].sum())
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--size", default="small")
    ap.add_argument("--numbers", type=int, default=4)
    args = ap.parse_args()
    tok = build_tokenizer()
    cfg = GeneratorConfig(n_numbers=args.numbers, sizes={"train": 12_000})
    puzzles = [Puzzle.from_json(r) for r in generate_split(cfg, "train", set())]
    data = EncodedDataset([encode(e, tok) for e in build_examples(puzzles, Recipe(), 0)])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {args.size}, "
          f"Countdown-{args.numbers} op+back, mean {data.n_tokens / len(data):.1f} tokens/example")
    base = measure(data, tok, size=args.size, batch=64, bf16=False, attn="sdpa", fixed_width=64, steps=args.steps)
    print(f"baseline fp32, sdpa, padded 64x64       {base:10,.0f} tokens/s")
    ours = measure(data, tok, size=args.size, batch=256, bf16=True, attn="eager", fixed_width=0, steps=args.steps)
    print(f"sbt bf16 autocast, eager, bucketed 256  {ours:10,.0f} tokens/s")
    print(f"speed-up {ours / base:.2f}x")


if __name__ == "__main__":
    main()
