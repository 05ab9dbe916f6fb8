"""GRPO (Shao et al. 2024) with the strict verifier as the reward: ``sbt train --objective
grpo --base-model DIR``.

Each step takes ``--batch-size`` train puzzles (the first ``--train-puzzles`` of the data
folder's train.jsonl, none of them in an evaluation split) and samples ``--group`` answers
to each from the model being trained (sbt's own torch sampling, ``TorchBackend.from_model``:
the tree sampler of ``sbt_core/backends/decoding.py``, at ``--temperature``; the seed is the
run's seed and the step, so a resumed run samples what it would have). The reward of an
answer is 1 when the strict verifier accepts it (``sbt_core.trace.is_verified``: it ends in
``Goal Reached!`` and its steps solve the puzzle) and 0 otherwise; no format term (the
verifier already asks for the format). The advantage of an answer is its reward less its
group's mean, over the group's standard deviation (+1e-4): a group whose answers all score
the same teaches nothing. The loss is TRL's GRPOTrainer default (``loss_type="dapo"``, one
update per batch so the ratio is 1 and clipping never acts): ``-A * log p`` per completion
token, summed over the batch's completion tokens and divided by their number; with
``--beta`` > 0 the k3 estimate of the KL divergence to the starting model per token is
added, times ``--beta`` (TRL's default and sbt's: 0, no reference model).
"""

from __future__ import annotations

from pathlib import Path

import torch

from sbt_core.errors import SbtError
from sbt_core.generate import eval_puzzle_keys, read_puzzles
from sbt_core.trace import is_verified, prompt

from .preference import Sequences, token_logps

MAX_NEW_TOKENS = 96  # the tokens one answer may take (sbt's sampling methods' default)


def group_advantages(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """(reward - group mean) / (group std + 1e-4), per answer (groups: consecutive runs of
    ``group`` answers; the std is the sample std, as in TRL)."""
    r = rewards.view(-1, group).float()
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).reshape(-1)


def grpo_loss(logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, beta: float = 0.0,
              ref_logps: torch.Tensor | None = None) -> torch.Tensor:
    """The on-policy GRPO loss over completion tokens (``mask``), token-level mean (DAPO)."""
    ratio = torch.exp(logps - logps.detach())  # 1, with the policy gradient's derivative
    per_token = -ratio * advantages[:, None]
    if beta:
        d = ref_logps - logps
        per_token = per_token + beta * (torch.exp(d) - d - 1)
    mask = mask.float()
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


class GRPO:
    """Train puzzles as examples for ``training.finetune``; ``loss`` samples and scores."""

    name = "grpo"

    def __init__(self, cfg, tok, prefix: list[int], log) -> None:
        self.cfg, self.tok, self.prefix = cfg, tok, list(prefix)
        self.needs_ref = cfg.beta > 0
        train_file = Path(cfg.data_dir) / "train.jsonl"
        from .sft import _rules

        self.puzzles = read_puzzles(train_file, cfg.train_puzzles, rules=_rules(cfg.data_dir))
        held_out = eval_puzzle_keys(cfg.data_dir)
        leaked = sum(p.key in held_out for p in self.puzzles)
        if leaked:
            raise SbtError(f"{train_file}: {leaked:,} of the puzzles are also in an evaluation split; "
                           "GRPO trains on train puzzles only")
        self.heads = [self.prefix + tok(prompt(p), add_special_tokens=False)["input_ids"] for p in self.puzzles]
        self.offsets = torch.zeros(len(self.puzzles) + 1, dtype=torch.long)
        self.offsets[1:] = torch.cumsum(torch.tensor([len(h) for h in self.heads], dtype=torch.long), 0)
        self._backend = None
        log(f"GRPO on {len(self.puzzles):,} train puzzles of {train_file}, {cfg.group} answers each")

    def __len__(self) -> int:
        return len(self.puzzles)

    def data(self) -> dict:
        return {"train_file": str(Path(self.cfg.data_dir) / "train.jsonl"), "puzzles": len(self.puzzles)}

    def record(self) -> dict:
        return {"group": self.cfg.group, "temperature": self.cfg.temperature, "beta": self.cfg.beta,
                "max_new_tokens": MAX_NEW_TOKENS, "reward": "1 if the strict verifier accepts the answer, else 0",
                "loss": "dapo (token-level mean), one update per batch", "advantage": "group-normalised"}

    def rollouts(self, rows: list[int], model, step: int):
        """(completions per puzzle, rewards) of one batch, sampled from ``model`` as it is now."""
        from sbt_core.backends.torch_backend import TorchBackend

        was_training = model.training
        if self._backend is None or self._backend.model is not model:
            self._backend = TorchBackend.from_model(model, self.tok, device=str(next(model.parameters()).device))
        model.eval()
        samples = self._backend.sample([prompt(self.puzzles[r]) for r in rows], n=self.cfg.group,
                                       temperature=self.cfg.temperature, max_new_tokens=MAX_NEW_TOKENS,
                                       seed=self.cfg.seed * 1_000_003 + step)
        model.train(was_training)
        rewards = torch.tensor([float(is_verified(self.puzzles[r], c.text)) for r, comps in zip(rows, samples)
                                for c in comps])
        return samples, rewards

    def loss(self, rows, model, ref, step, device):
        rows = list(rows)
        samples, rewards = self.rollouts(rows, model, step)
        g = self.cfg.group
        heads = [self.heads[r] for r in rows for _ in range(g)]
        tails = [list(c.token_ids) for comps in samples for c in comps]
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        inputs = {k: v.to(device) for k, v in Sequences.of_ids(heads, tails, pad).batch(list(range(len(heads)))).items()}
        advantages = group_advantages(rewards, g).to(device)
        mask = inputs["completion_mask"][:, 1:]
        ref_logps = None
        if ref is not None:
            with torch.no_grad():
                ref_logps = token_logps(ref, inputs)
        loss = grpo_loss(token_logps(model, inputs), advantages, mask, self.cfg.beta, ref_logps)
        by_puzzle = rewards.view(-1, g)
        info = {"reward": float(rewards.mean()), "solved_any": float((by_puzzle.max(1).values > 0).float().mean()),
                "learning_groups": float((by_puzzle.std(1) > 0).float().mean()),
                "generated_tokens": int(sum(len(t) for t in tails))}
        return loss, int(inputs["attention_mask"].sum()), info
