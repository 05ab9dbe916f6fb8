"""Greedy accuracy with the strict verifier (used for learning curves during training)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sbt_core.countdown import Puzzle, verify
from sbt_core.trace import parse_response, prompt


@dataclass
class GreedyReport:
    n: int = 0
    solved: int = 0
    ended_backtrack: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.solved / self.n if self.n else 0.0

    def to_json(self) -> dict:
        return {"n": self.n, "accuracy": self.accuracy, "ended_backtrack": self.ended_backtrack / max(self.n, 1),
                "failures": self.failures}


@torch.no_grad()
def greedy_texts(model, tokenizer, puzzles: list[Puzzle], batch_size: int = 128, max_new_tokens: int = 96) -> list[str]:
    """Greedy responses (text after the prompt) for each puzzle, batched with left padding."""
    model.eval()
    device = next(model.parameters()).device
    out: list[str] = []
    for s in range(0, len(puzzles), batch_size):
        prompts = [[tokenizer.bos_token_id] + tokenizer.encode(prompt(p), add_special_tokens=False)
                   for p in puzzles[s : s + batch_size]]
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        for row in gen[:, width:].tolist():
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            out.append(tokenizer.decode([t for t in row if t != tokenizer.pad_token_id]))
    model.train()
    return out


def greedy_accuracy(model, tokenizer, puzzles: list[Puzzle], batch_size: int = 128) -> GreedyReport:
    report = GreedyReport()
    for puzzle, text in zip(puzzles, greedy_texts(model, tokenizer, puzzles, batch_size)):
        resp = parse_response(text)
        verdict = verify(puzzle, resp.steps)
        report.n += 1
        report.ended_backtrack += resp.backtracked
        if verdict.ok:
            report.solved += 1
        else:
            report.failures[str(verdict.failure)] = report.failures.get(str(verdict.failure), 0) + 1
    return report
