"""Preference optimisation of a trained model on its own verifier-labelled samples: DPO and KTO.

``sbt train --objective dpo|kto --prefs FILE --base-model DIR``. The data is a file of
``sbt harvest --labelled K``: per TRAIN puzzle, up to K of the model's distinct verified
samples and K failing ones, each labelled by the strict verifier (``sbt_core.trace.
is_verified``). The labels are checked again here, and a puzzle that is in an evaluation
split of the data folder (val / test_seen / test_new) is refused, whatever the file says.

- **DPO** (Rafailov et al. 2023): per puzzle up to ``pairs`` pairs (chosen = a verified
  sample, rejected = a failing one; both lists likeliest first, paired in order), loss
  ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))`` over summed completion
  log-probs, mean over the batch (TRL's ``loss_type="sigmoid"``); ``--sft-weight a`` adds
  ``a`` times the chosen completions' mean token NLL (RPO, Pang et al. 2024: DPO alone
  lowers the chosen answers' likelihood too, and at this scale greedy decoding collapses).
- **KTO** (Ethayarajh et al. 2024): every labelled sample alone (desirable = verified),
  loss ``w_d * (1 - sigmoid(beta * (r - z)))`` for a desirable sample and ``w_u * (1 -
  sigmoid(beta * (z - r)))`` for an undesirable one, ``r`` its log-ratio to the reference,
  ``z`` the batch's KL estimate: the mean log-ratio of mismatched (prompt, completion) pairs
  (each prompt with the next example's completion in the batch, cycled), clamped at 0 and
  not differentiated; mean over the batch (TRL's ``KTOTrainer``, ``loss_type="kto"``).

The reference model is a frozen copy of the starting weights (``--base-model``), so a
resumed run rebuilds it exactly. The arithmetic is pinned to TRL's trainers by
tests/test_preference.py (the same loss on the same model and batch); sbt keeps its own
loop (``training/finetune.py``, shared with GRPO) rather than TRL's ``Trainer`` because the
latter's checkpoints are pickles (``optimizer.pt``, ``rng_state.pth``, ``training_args.bin``)
and sbt's are data (``training/checkpoint.py``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from sbt_core.countdown import Puzzle
from sbt_core.errors import SbtError
from sbt_core.generate import eval_puzzle_keys
from sbt_core.trace import is_verified, prompt



# --------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class Labelled:
    """One labelled sample of a puzzle: the model's text after the prompt and whether the
    strict verifier accepts it (``finish``: why sampling stopped; "eos" adds the end token)."""

    puzzle: Puzzle
    text: str
    verified: bool
    finish: str


def read_prefs(path: str | Path, data_dir: str | Path) -> tuple[list[list[Labelled]], dict]:
    """Per puzzle, its labelled samples (verified ones first, each label likeliest first, as
    ``sbt harvest --labelled`` wrote them), and what the file is (its harvest settings,
    sha256, counts). One line for a file that is missing, not a labelled harvest, has a
    puzzle of an evaluation split, or a label the verifier does not give."""
    path = Path(path)
    if not path.is_file():
        raise SbtError(f"--prefs {path}: no such file (make one with `sbt harvest --labelled 4 --out {path}`)")
    record = path.with_name(path.name + ".json")
    try:
        settings = json.loads(record.read_text())["settings"]
        labelled = int(settings.get("labelled", 0))
    except (OSError, ValueError, KeyError, TypeError):
        raise SbtError(f"--prefs {path}: no harvest record beside it ({record.name}); make the file with "
                       "`sbt harvest --labelled K`") from None
    if labelled <= 0:
        raise SbtError(f"--prefs {path} was harvested without --labelled: it has no labelled samples; "
                       "make it with `sbt harvest --labelled K`")
    held_out = eval_puzzle_keys(data_dir)
    groups, raw = [], path.read_bytes()
    for n, line in enumerate(raw.decode().splitlines(), 1):
        try:
            row = json.loads(line)
            puzzle = Puzzle.from_json(row)
            samples = row["samples"]
            items = [Labelled(puzzle, str(s["text"]), bool(s["verified"]), str(s.get("finish", "stop")))
                     for s in samples]
        except (ValueError, KeyError, TypeError) as exc:
            raise SbtError(f"--prefs {path}, line {n}: not a labelled harvest line ({type(exc).__name__})") from None
        if puzzle.key in held_out:
            raise SbtError(f"--prefs {path}, line {n}: puzzle {puzzle} is in an evaluation split of {data_dir} "
                           "(val / test_seen / test_new); preference data comes from train puzzles only")
        for item in items:
            if is_verified(puzzle, item.text) != item.verified:
                raise SbtError(f"--prefs {path}, line {n}: a sample labelled verified={item.verified} that the "
                               "verifier judges otherwise; labels come from the verifier only")
        if items:
            groups.append(items)
    info = {"file": str(path), "sha256": hashlib.sha256(raw).hexdigest(), "harvest": settings,
            "puzzles": len(groups)}
    return groups, info


def dpo_pairs(groups: list[list[Labelled]], pairs: int) -> list[tuple[Labelled, Labelled]]:
    """Per puzzle up to ``pairs`` (chosen, rejected): its verified and failing samples,
    each likeliest first, paired in order; puzzles without both give none."""
    out = []
    for items in groups:
        good = [x for x in items if x.verified]
        bad = [x for x in items if not x.verified]
        out += list(zip(good, bad))[:pairs]
    return out


class Sequences:
    """Token ids of (prompt + completion) sequences and where each completion starts."""

    def __init__(self, tok, prefix: list[int], items: list[Labelled]) -> None:
        eos = tok.eos_token_id
        heads = [list(prefix) + tok(prompt(x.puzzle), add_special_tokens=False)["input_ids"] for x in items]
        tails = [tok(x.text, add_special_tokens=False)["input_ids"] + ([eos] if x.finish == "eos" else [])
                 for x in items]
        self.set(heads, tails, tok.pad_token_id if tok.pad_token_id is not None else eos)

    @classmethod
    def of_ids(cls, heads: list[list[int]], tails: list[list[int]], pad_id: int) -> "Sequences":
        """Sequences of given token ids (a sampled completion's own tokens)."""
        obj = cls.__new__(cls)
        obj.set(heads, tails, pad_id)
        return obj

    def set(self, heads: list[list[int]], tails: list[list[int]], pad_id: int) -> None:
        self.ids = [h + t for h, t in zip(heads, tails)]
        self.starts = [len(h) for h in heads]
        self.pad_id = pad_id

    def batch(self, rows: list[int], completion_of: list[int] | None = None) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``, ``attention_mask`` and ``completion_mask`` of the rows;
        ``completion_of[j]``: row j's prompt with that row's completion (KTO's mismatched pairs)."""
        seqs, starts = [], []
        for j, r in enumerate(rows):
            c = r if completion_of is None else completion_of[j]
            seqs.append(self.ids[r][:self.starts[r]] + self.ids[c][self.starts[c]:])
            starts.append(self.starts[r])
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        comp = torch.zeros((len(seqs), width), dtype=torch.long)
        for j, (s, a) in enumerate(zip(seqs, starts)):
            ids[j, :len(s)] = torch.tensor(s)
            mask[j, :len(s)] = 1
            comp[j, a:len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask, "completion_mask": comp}


# --------------------------------------------------------------------------- the losses


def token_logps(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each position's log-prob of the next token ([rows, width - 1], float32)."""
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, inputs["input_ids"][:, 1:, None]).squeeze(-1)


def completion_logps(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per row, the summed log-probs of its completion tokens (float32)."""
    return (token_logps(model, inputs) * inputs["completion_mask"][:, 1:]).sum(-1)


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, dict]:
    """The DPO (sigmoid) loss, mean over the pairs, and the batch's reward accuracy and margin."""
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    loss = -F.logsigmoid(beta * margin).mean()
    seen = margin.detach()
    return loss, {"reward_acc": float((seen > 0).float().mean()), "margin": float(beta * seen.mean())}


def chosen_nll(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean negative log-prob of the chosen completions' tokens (``logps``, ``mask``:
    the chosen rows of ``token_logps`` and of the shifted completion mask): RPO's term
    (Pang et al. 2024; TRL's ``loss_type=["sigmoid", "sft"]``)."""
    return -logps[mask.bool()].mean()


def kto_loss(logps: torch.Tensor, ref: torch.Tensor, desirable: torch.Tensor, kl_logps: torch.Tensor,
             ref_kl: torch.Tensor, beta: float, w_desirable: float = 1.0,
             w_undesirable: float = 1.0) -> tuple[torch.Tensor, dict]:
    """The KTO loss, mean over the samples, and the batch's KL estimate."""
    z = (kl_logps - ref_kl).mean().detach().clamp(min=0)
    ratio = logps - ref
    good = w_desirable * (1 - torch.sigmoid(beta * (ratio[desirable] - z)))
    bad = w_undesirable * (1 - torch.sigmoid(beta * (z - ratio[~desirable])))
    return torch.cat([good, bad]).mean(), {"kl": float(z)}


# --------------------------------------------------------------------------- the objectives


class _Preference:
    """The examples of DPO or KTO for ``training.finetune`` (``offsets``: each example's
    length, for ``training.batches.iterate``'s length-bucketed batches)."""

    needs_ref = True

    def __init__(self, cfg, tok, prefix: list[int], log) -> None:
        self.cfg = cfg
        groups, self.prefs = read_prefs(cfg.prefs_file, cfg.data_dir)
        self.n, lengths = self._build(tok, prefix, groups)
        self.offsets = torch.zeros(self.n + 1, dtype=torch.long)
        if lengths:
            self.offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.long), 0)
        log(f"{self.name.upper()} on {', '.join(f'{v:,} {k}' for k, v in self.counts().items())} "
            f"from {self.prefs['puzzles']:,} train puzzles of {cfg.prefs_file}")

    def __len__(self) -> int:
        return self.n

    def data(self) -> dict:
        return {"prefs": self.prefs, **self.counts(), "example_tokens": int(self.offsets[-1])}


class DPO(_Preference):
    name = "dpo"

    def _build(self, tok, prefix, groups):
        pairs = dpo_pairs(groups, self.cfg.pairs)
        self.seqs = Sequences(tok, prefix, [c for c, _ in pairs] + [r for _, r in pairs])
        n = len(pairs)
        return n, [len(self.seqs.ids[i]) + len(self.seqs.ids[i + n]) for i in range(n)]

    def counts(self) -> dict:
        return {"pairs": self.n}

    def record(self) -> dict:
        return {"beta": self.cfg.beta, "pairs_per_puzzle": self.cfg.pairs,
                "loss": "sigmoid" + (f" + {self.cfg.sft_weight:g} x chosen NLL (RPO)" if self.cfg.sft_weight else "")}

    def loss(self, rows, model, ref, step, device):
        inputs = _to(self.seqs.batch(list(rows) + [r + self.n for r in rows]), device)
        mask = inputs["completion_mask"][:, 1:]
        with torch.no_grad():
            ref_logps = (token_logps(ref, inputs) * mask).sum(-1)
        per_token = token_logps(model, inputs)
        logps = (per_token * mask).sum(-1)
        b = len(rows)
        loss, info = dpo_loss(logps[:b], logps[b:], ref_logps[:b], ref_logps[b:], self.cfg.beta)
        if self.cfg.sft_weight:
            nll = chosen_nll(per_token[:b], mask[:b])
            loss = loss + self.cfg.sft_weight * nll
            info["chosen_nll"] = float(nll.detach())
        return loss, int(inputs["attention_mask"].sum()), info


class KTO(_Preference):
    name = "kto"

    def _build(self, tok, prefix, groups):
        items = [x for g in groups for x in g]
        self.seqs = Sequences(tok, prefix, items)
        self.labels = torch.tensor([x.verified for x in items], dtype=torch.bool)
        return len(items), [len(s) for s in self.seqs.ids]

    def counts(self) -> dict:
        good = int(self.labels.sum())
        return {"samples": self.n, "desirable": good, "undesirable": self.n - good}

    def record(self) -> dict:
        return {"beta": self.cfg.beta, "desirable_weight": self.cfg.desirable_weight,
                "undesirable_weight": self.cfg.undesirable_weight, "loss": "kto"}

    def loss(self, rows, model, ref, step, device):
        rows = list(rows)
        inputs = _to(self.seqs.batch(rows), device)
        mismatched = _to(self.seqs.batch(rows, rows[-1:] + rows[:-1]), device)  # each prompt, the previous completion
        with torch.no_grad():
            ref_logps = completion_logps(ref, inputs)
            ref_kl = completion_logps(ref, mismatched)
            kl_logps = completion_logps(model, mismatched)
        logps = completion_logps(model, inputs)
        loss, info = kto_loss(logps, ref_logps, self.labels[rows].to(device), kl_logps, ref_kl, self.cfg.beta,
                              self.cfg.desirable_weight, self.cfg.undesirable_weight)
        return loss, int(inputs["attention_mask"].sum()), info


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}
