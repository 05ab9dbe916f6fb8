"""llama.cpp vs torch, side by side in one run: speed (with ratios) and parity.

    python benchmarks/bench_llama.py --model models/countdown4-backtrack \\
        --split data/countdown4/test_new.jsonl --limit 50 --parity 200

Speed, each backend on the same puzzles and seeds (llama: the q8_0 GGUF unless --quant):
- greedy tokens/s: one greedy completion (96 tokens max) per puzzle;
- sampling tokens/s at N=32 (temperature 0.7): one call of 32 samples per puzzle;
- self-backtracking puzzles/s at N=32, b=1 (``METHODS['self-backtrack'].run``), with accuracy;
- ``sbt solve`` end to end (process start to exit, N=16, b=1), median of --solve-runs.

Parity on the first --parity puzzles: the rate of puzzles whose greedy output is
identical to torch's for the f32 and f16 GGUFs, and the argmax agreement of q8_0 (and q4_0
where the model's rows allow it) with torch along torch's greedy path (teacher forcing).

GGUFs are exported into --gguf-dir (default: a temporary folder; the model directory is
not touched). Threads: OMP_NUM_THREADS / SBT_NUM_THREADS apply to both backends.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from sbt_core.errors import SbtError  # noqa: E402
from sbt_core.generate import read_puzzles  # noqa: E402
from sbt_core.search import METHODS  # noqa: E402
from sbt_core.search.events import Done  # noqa: E402
from sbt_core.trace import prompt  # noqa: E402


def export_all(model_dir: Path, out_dir: Path, quants: list[str]) -> dict[str, Path]:
    from sbt_core.gguf_export import export_gguf

    out_dir.mkdir(parents=True, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (model_dir / f).is_file():
            shutil.copy(model_dir / f, out_dir / f)
    paths = {}
    for q in quants:
        path = out_dir / f"model-{q}.gguf"
        if not path.is_file():
            try:
                export_gguf(model_dir, q, path)
            except SbtError as exc:
                print(f"  skip {q}: {exc}", file=sys.stderr)
                continue
        paths[q] = path
    return paths


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def greedy_speed(backend, puzzles, max_new: int) -> tuple[float, float]:
    tokens, secs = 0, 0.0
    for p in puzzles:
        out, dt = timed(lambda: backend.sample([prompt(p)], 1, 0.0, max_new, seed=0))
        tokens += out[0][0].n_tokens
        secs += dt
    return tokens / secs, secs


def sampling_speed(backend, puzzles, n: int, max_new: int) -> tuple[float, float]:
    tokens, secs = 0, 0.0
    for i, p in enumerate(puzzles):
        out, dt = timed(lambda: backend.sample([prompt(p)], n, 0.7, max_new, seed=i))
        tokens += sum(c.n_tokens for c in out[0])
        secs += dt
    return tokens / secs, secs


def backtrack_speed(backend, puzzles, n: int, b: int) -> tuple[float, float, float]:
    solved, secs = 0, 0.0
    run = METHODS["self-backtrack"].run
    for i, p in enumerate(puzzles):
        t0 = time.perf_counter()
        result = None
        for event in run(p, backend, {"n": n, "b": b}, i):
            if isinstance(event, Done):
                result = event.result
        secs += time.perf_counter() - t0
        solved += bool(result and result.solved)
    return len(puzzles) / secs, solved / len(puzzles), secs


def solve_wall(puzzle, backend: str, model: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        cmd = [sys.executable, "-m", "sbt_cli.app", "solve", str(puzzle), "--backend", backend, "--model", model,
               "--n", "16", "--b", "1", "--json"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        times.append(time.perf_counter() - t0)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"sbt solve --backend {backend} failed: {proc.stderr.strip()}")
    return statistics.median(times)


def torch_greedy_and_logits(tb, puzzles, max_new: int):
    """torch's greedy completions and, along them, its argmax at every position."""
    import torch

    rows = []
    for p in puzzles:
        c = tb.sample([prompt(p)], 1, 0.0, max_new, seed=0)[0][0]
        head = tb._prompt_ids(prompt(p))
        with torch.no_grad():
            logits = tb.model(input_ids=torch.tensor([head + c.token_ids])).logits[0, len(head) - 1:-1]
        rows.append((p, c, logits.argmax(-1).tolist()))
    return rows


def parity(tb, llama_by_quant: dict, puzzles, max_new: int) -> dict:
    ref = torch_greedy_and_logits(tb, puzzles, max_new)
    out = {}
    for q, lb in llama_by_quant.items():
        same = sum(lb.sample([prompt(p)], 1, 0.0, max_new, seed=0)[0][0].token_ids == c.token_ids for p, c, _ in ref)
        agree = total = 0
        for p, c, targmax in ref:
            lg = lb.position_logits(prompt(p), c.token_ids)
            agree += int((lg.argmax(-1) == np.array(targmax)).sum())
            total += len(targmax)
        out[q] = {"greedy_identical": same / len(ref), "argmax_agreement": agree / max(total, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="HF model directory (or name in models/)")
    ap.add_argument("--split", default=None, help="JSONL puzzles (default: data/countdownK/test_new.jsonl)")
    ap.add_argument("--limit", type=int, default=20, help="puzzles for the speed rows")
    ap.add_argument("--parity", type=int, default=50, help="puzzles for the parity rows (0: skip)")
    ap.add_argument("--quant", default="q8_0", help="GGUF type for the speed rows")
    ap.add_argument("--n", type=int, default=32, help="samples per expansion (sampling and self-backtracking)")
    ap.add_argument("--b", type=int, default=1, help="self-backtracking rounds")
    ap.add_argument("--max-new", type=int, default=96)
    ap.add_argument("--solve-runs", type=int, default=3, help="`sbt solve` processes per backend (0: skip)")
    ap.add_argument("--gguf-dir", default=None, help="where the GGUFs go (default: a temporary folder)")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()

    from sbt_core.backends.llama_backend import LlamaBackend
    from sbt_core.backends.torch_backend import TorchBackend
    from sbt_core.models import resolve_model

    model_dir = resolve_model(args.model)
    cfg = json.loads((model_dir / "config.json").read_text())
    tmp = None
    gguf_dir = Path(args.gguf_dir) if args.gguf_dir else Path(tmp := tempfile.mkdtemp(prefix="bench-llama-"))
    quants = list(dict.fromkeys(["f32", "f16", "q8_0", "q4_0", args.quant]))
    paths = export_all(model_dir, gguf_dir, quants)
    if args.quant not in paths:
        raise SystemExit(f"no {args.quant} GGUF for this model")
    split = args.split
    puzzles_all = None
    if split is None:
        for k in (4, 3):
            cand = ROOT / f"data/countdown{k}/test_new.jsonl"
            if cand.is_file():
                split = str(cand)
                break
    puzzles_all = read_puzzles(split, limit=max(args.limit, args.parity))
    speed_puzzles = puzzles_all[:args.limit]

    tb = TorchBackend(model_dir)
    lb = LlamaBackend(paths[args.quant])
    print(f"model {model_dir.name}: hidden {cfg['hidden_size']}, layers {cfg['num_hidden_layers']}; "
          f"llama {args.quant}; {len(speed_puzzles)} puzzles from {split}; "
          f"threads OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}", flush=True)
    rows = []

    def row(name, t_val, l_val, unit):
        rows.append({"metric": name, "unit": unit, "torch": t_val, "llama": l_val, "ratio": l_val / t_val if t_val else None})
        print(f"  {name:<34} torch {t_val:10.2f}  llama {l_val:10.2f}  {unit:<10} x{l_val / t_val:5.2f}", flush=True)

    for backend in (tb, lb):  # warm-up (first-call costs out of the rows)
        backend.sample([prompt(speed_puzzles[0])], 2, 0.7, 8, seed=0)
    row("greedy", greedy_speed(tb, speed_puzzles, args.max_new)[0],
        greedy_speed(lb, speed_puzzles, args.max_new)[0], "tokens/s")
    row(f"sampling N={args.n}", sampling_speed(tb, speed_puzzles, args.n, args.max_new)[0],
        sampling_speed(lb, speed_puzzles, args.n, args.max_new)[0], "tokens/s")
    t_ps, t_acc, _ = backtrack_speed(tb, speed_puzzles, args.n, args.b)
    l_ps, l_acc, _ = backtrack_speed(lb, speed_puzzles, args.n, args.b)
    row(f"self-backtrack N={args.n} b={args.b}", t_ps, l_ps, "puzzles/s")
    print(f"  {'  accuracy on these puzzles':<34} torch {100 * t_acc:9.1f}%  llama {100 * l_acc:9.1f}%", flush=True)
    accuracy = {"torch": t_acc, "llama": l_acc}
    if args.solve_runs:
        p = speed_puzzles[0]
        t_s = solve_wall(p, "torch", str(model_dir), args.solve_runs)
        l_s = solve_wall(p, "llama", str(paths[args.quant]), args.solve_runs)
        rows.append({"metric": "sbt solve wall", "unit": "s", "torch": t_s, "llama": l_s, "ratio": t_s / l_s})
        print(f"  {'sbt solve end to end (N=16, b=1)':<34} torch {t_s:10.2f}  llama {l_s:10.2f}  {'s':<10} "
              f"x{t_s / l_s:5.2f} faster", flush=True)
    par = {}
    if args.parity:
        others = {q: (lb if q == args.quant else LlamaBackend(path)) for q, path in paths.items()}
        par = parity(tb, others, puzzles_all[:args.parity], args.max_new)
        print(f"parity on {min(args.parity, len(puzzles_all))} puzzles (greedy, up to {args.max_new} tokens):")
        for q, v in par.items():
            print(f"  {q:<7} greedy identical {100 * v['greedy_identical']:6.1f}%   "
                  f"argmax agreement {100 * v['argmax_agreement']:7.3f}%")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"model": model_dir.name, "quant": args.quant, "rows": rows,
                                                   "accuracy": accuracy, "parity": par}, indent=1) + "\n")
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
