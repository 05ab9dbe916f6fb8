"""Write a model card (README.md) for a trained model directory from its training.json.

    python -m training.model_card models/countdown3-backtrack [--accuracy bench.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


# a puzzle per size for the card's transformers snippet (a prompt in the protocol's format)
SNIPPET_PUZZLES = {3: "[2, 3, 5]->target 30", 4: "[19, 90, 41, 32]->target 80", 5: "[2, 7, 9, 25, 50]->target 61",
                   6: "[1, 3, 7, 10, 25, 50]->target 99"}
SNIPPET_MARK = "<!-- transformers-snippet -->"


def transformers_section(model_ref: str, n_numbers: int) -> list[str]:
    """The card's "With plain transformers" section: five lines that answer a puzzle with
    ``AutoTokenizer`` + ``generate`` (the tokenizer adds ``<bos>`` itself; tested on the
    shipped cards by tests/test_tokenizer_bos.py)."""
    question = SNIPPET_PUZZLES.get(n_numbers, SNIPPET_PUZZLES[4])
    return [
        "## With plain transformers",
        "",
        "The tokenizer puts `<bos>` in front of the prompt itself, as in training, so the usual five",
        "lines answer a puzzle (greedy; `sbt solve` adds the search and the strict verifier):",
        "",
        SNIPPET_MARK,
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'tok = AutoTokenizer.from_pretrained("{model_ref}")',
        f'model = AutoModelForCausalLM.from_pretrained("{model_ref}")',
        f'inputs = tok("###Question: numbers {question}\\n###Response:\\n", return_tensors="pt")',
        "print(tok.decode(model.generate(**inputs, max_new_tokens=96, do_sample=False)[0], skip_special_tokens=True))",
        "```",
        "",
    ]


def render(model_dir: Path, accuracy: list[dict] | None = None) -> str:
    info = json.loads((model_dir / "training.json").read_text())
    cfg, data = info["config"], info["data"]
    lines = [
        f"# {model_dir.name}",
        "",
        f"A {info['params'] / 1e6:.1f}M-parameter Llama-architecture causal LM "
        + (f"fine-tuned from `{cfg['base_model']}` by `sbt train --base-model` " if cfg.get("base_model")
           else "trained from scratch by `sbt train` ")
        + f"on Countdown ({'optimal paths only (SFT baseline)' if cfg['data'] == 'op' else 'optimal paths + backtracking examples (self-backtracking)'}).",
        "",
        *transformers_section(str(model_dir), int(_numbers(cfg))),
        "## Reproduce",
        "",
        "```bash",
        f"sbt data generate --numbers {_numbers(cfg)} --train {_train_size(cfg)} --seed 0 --out {cfg['data_dir']}/ --overwrite",
        info.get("command") or "(command not recorded)",
        "```",
        "",
        "## Training",
        "",
        f"- data: `{data['train_file']}`, {data['examples']:,} examples ({data['example_tokens']:,} tokens), "
        f"recipe {json.dumps(data['recipe'])}",
        f"- model size `{cfg['size']}`, batch {cfg['batch_size']}, lr {cfg['lr']} (cosine, warm-up {cfg['warmup_steps']}), "
        f"seed {cfg['seed']}" + (f", weights averaged (EMA decay {cfg['ema']}; evaluated and saved)" if cfg.get("ema") else ""),
        f"- {info['steps']:,} steps, {info['tokens']:,} training tokens, {info['wall_s'] / 60:.1f} minutes, "
        f"{info['precision']}",
        f"- hardware: {info['hardware']}; torch {info['versions']['torch']}, transformers {info['versions']['transformers']}",
        "",
        "## Learning curve (greedy accuracy on val, strict verifier)",
        "",
        "| step | tokens | minutes | loss | val greedy | ends in <backtrack> |",
        "|---|---|---|---|---|---|",
    ]
    for p in info["curve"]:
        lines.append(f"| {p['step']:,} | {p['tokens']:,} | {p['wall_s'] / 60:.1f} | {p['loss']} | "
                     f"{100 * p['val_greedy']:.1f}% | {100 * p['val_ended_backtrack']:.1f}% |")
    if accuracy:
        lines += ["", "## Accuracy", "", "| split | puzzles | greedy | ends in <backtrack> | backtrack precision | backtrack recall |",
                  "|---|---|---|---|---|---|"]
        pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"
        for r in accuracy:
            lines.append(f"| {r.get('split', '')} | {r['n']} | {pct(r['greedy'])} | {pct(r['bt_ended_backtrack'])} | "
                         f"{pct(r['bt_precision'])} | {pct(r['bt_recall'])} |")
        lines += ["", "Measured with `python benchmarks/bench_accuracy.py --models "
                  f"{model_dir.name} --split <split file> --limit 1000`."]
    return "\n".join(lines) + "\n"


def _train_size(cfg: dict) -> str:
    meta = Path(cfg["data_dir"]) / "meta.json"
    try:
        return str(json.loads(meta.read_text())["written"]["train"])
    except (OSError, KeyError, ValueError):
        return "<N>"


def _numbers(cfg: dict) -> str:
    name = Path(cfg["data_dir"]).name
    return name.removeprefix("countdown") if name.startswith("countdown") else "4"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--accuracy", type=Path, help="JSON rows from bench_accuracy.py --json (with a 'split' key)")
    args = ap.parse_args()
    acc = json.loads(args.accuracy.read_text()) if args.accuracy else None
    (args.model_dir / "README.md").write_text(render(args.model_dir, acc))


if __name__ == "__main__":
    main()
