"""Training tokens/s on this machine: the fp32 padded baseline vs sbt's choice, in one run.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_train_speed.py [--steps 20] [--size small]

Rows (each a fresh model, the same batches, ``training.stepper.Stepper`` as `sbt train` uses it):
- baseline: fp32, sdpa attention, fixed-width padded batches of 64 x 64;
- bf16 autocast, eager attention, length-bucketed batches of 256 (sbt's choice before);
- bf16-master (bf16 model, fp32 master weights), same batches;
- sbt's default: bf16-master + torch.compile (static shapes, widths padded to 16).
Every batch width is stepped once before timing, so compile time is not counted (it is
printed: a one-off cost of each run). Tokens/s counts real (non-padding) tokens. Prints
the ratio of each row to the baseline.
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
from training.stepper import Stepper


def measure(data, tok, *, size, batch, precision, attn, fixed_width, steps, compile_model=False):
    """(tokens/s, warm-up seconds) of ``steps`` training steps after one step per batch width."""
    model = new_model(tok, size)
    model.set_attn_implementation(attn)
    stepper = Stepper(model, torch.optim.AdamW(model.parameters(), lr=1e-3), precision, compile_model)
    it = iterate(data, batch, seed=0)
    batches = []
    for _ in range(steps):
        inputs = collate(data, next(it)[2], tok.pad_token_id, multiple=fixed_width or stepper.pad_multiple)
        batches.append({k: v[:, :fixed_width] for k, v in inputs.items()} if fixed_width else inputs)
    t0 = time.perf_counter()
    seen = set()
    for inputs in batches:  # warm-up: every width once (compiles each static shape)
        if inputs["input_ids"].shape[1] not in seen:
            seen.add(inputs["input_ids"].shape[1])
            stepper.step(inputs)
    warm = time.perf_counter() - t0
    tokens, t0 = 0, time.perf_counter()
    for inputs in batches:
        stepper.step(inputs)
        tokens += int(inputs["attention_mask"].sum())
    return tokens / (time.perf_counter() - t0), warm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", default="small")
    ap.add_argument("--numbers", type=int, default=4)
    args = ap.parse_args()
    tok = build_tokenizer()
    cfg = GeneratorConfig(n_numbers=args.numbers, sizes={"train": 12_000})
    puzzles = [Puzzle.from_json(r) for r in generate_split(cfg, "train", set())]
    data = EncodedDataset([encode(e, tok) for e in build_examples(puzzles, Recipe(), 0)])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {args.size}, "
          f"Countdown-{args.numbers} op+back, mean {data.n_tokens / len(data):.1f} tokens/example")
    rows = [
        ("baseline fp32, sdpa, padded 64x64", dict(batch=64, precision="fp32", attn="sdpa", fixed_width=64)),
        ("bf16 autocast, eager, bucketed 256", dict(batch=256, precision="bf16", attn="eager", fixed_width=0)),
        ("bf16-master, eager, bucketed 256", dict(batch=256, precision="bf16-master", attn="eager", fixed_width=0)),
        ("sbt: bf16-master + torch.compile, 256", dict(batch=256, precision="bf16-master", attn="eager",
                                                       fixed_width=0, compile_model=True)),
    ]
    base = None
    for label, kw in rows:
        speed, warm = measure(data, tok, size=args.size, steps=args.steps, **kw)
        base = base or speed
        print(f"{label:40s} {speed:10,.0f} tokens/s  {speed / base:5.2f}x  (warm-up {warm:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
