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


def base_model_section(model_ref: str, n_numbers: int, info: dict) -> list[str]:
    """What a card of a model fine-tuned from a brought base says about it (``sbt train
    --base-model``): the base, its tokenizer, LoRA, and how plain transformers (and peft,
    for an adapter directory) load it."""
    base, cfg = info.get("base_model") or {}, info["config"]
    lora = base.get("lora")
    adapter = bool(lora) and not lora.get("merged")
    question = SNIPPET_PUZZLES.get(n_numbers, SNIPPET_PUZZLES[4])
    prefix = ", ".join(f"`{t}`" for t in base.get("prefix") or []) or "nothing"
    lines = [
        "## Base model",
        "",
        f"- base: `{base.get('path', cfg.get('base_model'))}` ({base.get('architecture')}, model_type "
        f"`{base.get('model_type')}`, {base.get('params', 0) / 1e6:.1f}M parameters, weights sha256 "
        f"`{str(base.get('sha256', ''))[:16]}`)",
        f"- tokenizer: the base's own ({base.get('vocab', 0):,} tokens); added: "
        + (", ".join(f"`{t}`" for t in base.get("added_tokens") or []) or "none")
        + f" (new embedding rows start as the mean of the others); `Goal Reached!` is text; prompts start with "
          f"{prefix} (what the tokenizer puts in front of a text itself)",
    ]
    if lora:
        lines.append(f"- LoRA: rank {lora['r']}, alpha {lora['alpha']}, on all linear layers but the output head, "
                     f"plus the added tokens' rows ({lora['trainable_params']:,} trained parameters); "
                     + ("saved merged into the model" if not adapter else
                        "saved as an adapter directory (adapter_config.json names the base directory); "
                        "`sbt solve --model` merges it on load"))
    lines += ["", "## With plain transformers", "", SNIPPET_MARK, "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer"]
    if adapter:
        lines += ["from peft import PeftModel",
                  f'tok = AutoTokenizer.from_pretrained("{model_ref}")',
                  f'base = AutoModelForCausalLM.from_pretrained("{base.get("path", cfg.get("base_model"))}")',
                  "base.resize_token_embeddings(len(tok))  # the added tokens (their rows are in the adapter)",
                  f'model = PeftModel.from_pretrained(base, "{model_ref}").merge_and_unload()']
    else:
        lines += [f'tok = AutoTokenizer.from_pretrained("{model_ref}")',
                  f'model = AutoModelForCausalLM.from_pretrained("{model_ref}")']
    lines += [f'inputs = tok("###Question: numbers {question}\\n###Response:\\n", return_tensors="pt")',
              "out = model.generate(**inputs, max_new_tokens=96, do_sample=False)",
              "print(tok.decode(out[0, inputs.input_ids.shape[1]:], skip_special_tokens=False))  # (<backtrack> is special)",
              "```", ""]
    return lines


def render(model_dir: Path, accuracy: list[dict] | None = None) -> str:
    info = json.loads((model_dir / "training.json").read_text())
    cfg, data = info["config"], info["data"]
    base = info.get("base_model")
    arch = f"{base['architecture']} ({base['model_type']})" if base else "Llama-architecture"
    lines = [
        f"# {model_dir.name}",
        "",
        f"A {info['params'] / 1e6:.1f}M-parameter {arch} causal LM "
        + (f"fine-tuned from `{cfg['base_model']}` by `sbt train --base-model` " if cfg.get("base_model")
           else "trained from scratch by `sbt train` ")
        + f"on Countdown ({'optimal paths only (SFT baseline)' if cfg['data'] == 'op' else 'optimal paths + backtracking examples (self-backtracking)'}).",
        "",
        *(base_model_section(str(model_dir), int(_numbers(cfg)), info) if base
          else transformers_section(str(model_dir), int(_numbers(cfg)))),
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
        (f"- model: the base's ({'LoRA rank ' + str(cfg['lora']) if cfg.get('lora') else 'every weight trained'})"
         if base else f"- model size `{cfg['size']}`") + f", batch {cfg['batch_size']}, lr {cfg['lr']} (cosine, warm-up {cfg['warmup_steps']}), "
        f"seed {cfg['seed']}" + (f", weights averaged (EMA decay {cfg['ema']}; evaluated and saved)" if cfg.get("ema") else ""),
        f"- {info['steps']:,} steps, {info['tokens']:,} training tokens, {info['wall_s'] / 60:.1f} minutes, "
        f"{info['precision']}",
        f"- recipe `{cfg.get('preset', 'sbt')}` (`sbt train --recipe`)"
        + (f"; sbt {info['versions']['sbt']}" if info["versions"].get("sbt") else ""),
        f"- hardware: {info['hardware']}"
        + (f" (data-parallel: {info['world_size']} processes, batch {cfg['batch_size']} split among them)"
           if info.get("world_size", 1) > 1 else "")
        + f"; torch {info['versions']['torch']}, transformers {info['versions']['transformers']}"
        + (f", peft {info['versions']['peft']}" if info["versions"].get("peft") else ""),
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
