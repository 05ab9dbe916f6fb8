"""Preference optimisation of a trained model on its own verifier-labelled samples: DPO and KTO.

``sbt train --objective dpo|kto --prefs FILE --base-model DIR``. The data is a file of
``sbt harvest --labelled K``: per TRAIN puzzle, up to K of the model's distinct verified
samples and K failing ones, each labelled by the strict verifier (``harness.harvest.
is_verified``). The labels are checked again here, and a puzzle that is in an evaluation
split of the data folder (val / test_seen / test_new) is refused, whatever the file says.

- **DPO** (Rafailov et al. 2023): per puzzle up to ``pairs`` pairs (chosen = a verified
  sample, rejected = a failing one; both lists likeliest first, paired in order), loss
  ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))`` over summed completion
  log-probs, mean over the batch (TRL's ``loss_type="sigmoid"``).
- **KTO** (Ethayarajh et al. 2024): every labelled sample alone (desirable = verified),
  loss ``w_d * (1 - sigmoid(beta * (r - z)))`` for a desirable sample and ``w_u * (1 -
  sigmoid(beta * (z - r)))`` for an undesirable one, ``r`` its log-ratio to the reference,
  ``z`` the batch's KL estimate: the mean log-ratio of mismatched (prompt, completion) pairs
  (each prompt with the next example's completion in the batch, cycled), clamped at 0 and
  not differentiated; mean over the batch (TRL's ``KTOTrainer``, ``loss_type="kto"``).

The reference model is a frozen copy of the starting weights (``--base-model``), so a
resumed run rebuilds it exactly. The arithmetic is pinned to TRL's trainers by
tests/test_preference.py (the same loss on the same model and batch); sbt keeps its own
loop rather than TRL's ``Trainer`` because the latter's checkpoints are pickles
(``optimizer.pt``, ``rng_state.pth``, ``training_args.bin``) and sbt's checkpoints are data
(``training/checkpoint.py``): a run here checkpoints, resumes, evaluates val greedy and
writes training.json exactly as ``sbt train`` does (``training/sft.py``). One process
(no torchrun), float32.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from sbt_core.countdown import Puzzle
from sbt_core.errors import SbtError
from sbt_core.files import write_json
from sbt_core.generate import eval_puzzle_keys, read_puzzles
from sbt_core.trace import prompt

OBJECTIVES = ("sft", "dpo", "kto")
PREFERENCE = ("dpo", "kto")


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
    from harness.harvest import is_verified

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
    """Token ids of (prompt + completion) sequences and where each completion starts; the
    training rows of one objective: a DPO example is a pair of sequences (chosen, rejected),
    a KTO example one sequence and its label."""

    def __init__(self, tok, prefix: list[int], items: list[Labelled]) -> None:
        eos = tok.eos_token_id
        self.ids, self.starts = [], []
        for x in items:
            head = list(prefix) + tok(prompt(x.puzzle), add_special_tokens=False)["input_ids"]
            tail = tok(x.text, add_special_tokens=False)["input_ids"] + ([eos] if x.finish == "eos" else [])
            self.ids.append(head + tail)
            self.starts.append(len(head))
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos

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


class PreferenceData:
    """The examples of one objective, for ``training.batches.iterate`` (``offsets`` give
    each example's length, for length-bucketed batches)."""

    def __init__(self, objective: str, tok, prefix: list[int], groups: list[list[Labelled]], pairs: int) -> None:
        self.objective = objective
        if objective == "dpo":
            chosen = dpo_pairs(groups, pairs)
            self.seqs = Sequences(tok, prefix, [c for c, _ in chosen] + [r for _, r in chosen])
            self.n = len(chosen)
            lengths = [len(self.seqs.ids[i]) + len(self.seqs.ids[i + self.n]) for i in range(self.n)]
            self.labels = None
        else:
            items = [x for g in groups for x in g]
            self.seqs = Sequences(tok, prefix, items)
            self.n = len(items)
            lengths = [len(s) for s in self.seqs.ids]
            self.labels = torch.tensor([x.verified for x in items])
        self.offsets = torch.zeros(self.n + 1, dtype=torch.long)
        self.offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.long), 0) if lengths else 0

    def __len__(self) -> int:
        return self.n

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def counts(self) -> dict:
        if self.labels is None:
            return {"pairs": self.n}
        good = int(self.labels.sum())
        return {"samples": self.n, "desirable": good, "undesirable": self.n - good}


# --------------------------------------------------------------------------- the losses


def completion_logps(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per row, the summed log-probs of its completion tokens (float32)."""
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, inputs["input_ids"][:, 1:, None]).squeeze(-1)
    return (logp * inputs["completion_mask"][:, 1:]).sum(-1)


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, dict]:
    """The DPO (sigmoid) loss, mean over the pairs, and the batch's reward accuracy and margin."""
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    loss = -F.logsigmoid(beta * margin).mean()
    return loss, {"reward_acc": float((margin > 0).float().mean()), "margin": float(beta * margin.mean())}


def kto_loss(logps: torch.Tensor, ref: torch.Tensor, desirable: torch.Tensor, kl_logps: torch.Tensor,
             ref_kl: torch.Tensor, beta: float, w_desirable: float = 1.0,
             w_undesirable: float = 1.0) -> tuple[torch.Tensor, dict]:
    """The KTO loss, mean over the samples, and the batch's KL estimate."""
    z = (kl_logps - ref_kl).mean().detach().clamp(min=0)
    ratio = logps - ref
    good = w_desirable * (1 - torch.sigmoid(beta * (ratio[desirable] - z)))
    bad = w_undesirable * (1 - torch.sigmoid(beta * (z - ratio[~desirable])))
    return torch.cat([good, bad]).mean(), {"kl": float(z)}


def batch_loss(data: PreferenceData, rows: list[int], model, ref, cfg, device) -> tuple[torch.Tensor, int, dict]:
    """(loss, tokens of the trained sequences, metrics) of one batch of example indices."""
    def move(d: dict) -> dict:
        return {k: v.to(device) for k, v in d.items()}

    if data.objective == "dpo":
        inputs = move(data.seqs.batch(list(rows) + [r + data.n for r in rows]))
        with torch.no_grad():
            ref_logps = completion_logps(ref, inputs)
        logps = completion_logps(model, inputs)
        b = len(rows)
        loss, info = dpo_loss(logps[:b], logps[b:], ref_logps[:b], ref_logps[b:], cfg.beta)
    else:
        rows = list(rows)
        inputs = move(data.seqs.batch(rows))
        mismatched = move(data.seqs.batch(rows, rows[-1:] + rows[:-1]))  # each prompt, the previous completion
        with torch.no_grad():
            ref_logps = completion_logps(ref, inputs)
            ref_kl = completion_logps(ref, mismatched)
            kl_logps = completion_logps(model, mismatched)
        logps = completion_logps(model, inputs)
        loss, info = kto_loss(logps, ref_logps, data.labels[rows].to(device), kl_logps, ref_kl, cfg.beta,
                              cfg.desirable_weight, cfg.undesirable_weight)
    return loss, int(inputs["attention_mask"].sum()), info


# --------------------------------------------------------------------------- the loop


def train_preference(cfg, resume: bool, log: Callable[[str], None], on_step: Callable[[dict], None] | None,
                     command: str, device: torch.device) -> dict:
    """The run (the caller holds the lock of ``cfg.out`` and checked --resume): model and
    reference from ``cfg.base_model``, the data from ``cfg.prefs_file``, AdamW with
    sbt's warm-up and cosine schedule over ``cfg.epochs`` epochs; checkpoints, val greedy
    and training.json as ``sbt train`` does."""
    from . import checkpoint as ckpt_io
    from .base_model import save_trained
    from .batches import iterate
    from .evaluate import greedy_accuracy
    from .sft import TrainState, _best_so_far, _hardware, _load_tokenizer_and_model, _puzzle_kind, lr_at
    from sbt_core.hf import special_prefix

    out, ckpt = Path(cfg.out), Path(cfg.out) / "checkpoint"
    saved = ckpt_io.load(ckpt) if resume else None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    groups, prefs_info = read_prefs(cfg.prefs_file, cfg.data_dir)
    tok, model, base_info = _load_tokenizer_and_model(cfg, device, log)
    ref = copy.deepcopy(model).eval().requires_grad_(False)  # the starting weights, frozen
    data = PreferenceData(cfg.objective, tok, special_prefix(tok), groups, cfg.pairs)
    if len(data) < cfg.batch_size:
        raise SbtError(f"--prefs {cfg.prefs_file}: {len(data):,} {cfg.objective.upper()} examples, fewer than "
                       f"--batch-size {cfg.batch_size}; harvest more puzzles or lower --batch-size")
    log(f"{cfg.objective.upper()} on {', '.join(f'{v:,} {k}' for k, v in data.counts().items())} "
        f"from {prefs_info['puzzles']:,} train puzzles of {cfg.prefs_file}")
    val = read_puzzles(Path(cfg.data_dir) / "val.jsonl", cfg.eval_puzzles)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    state = TrainState()
    if saved is not None:
        try:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            state = TrainState(**saved["train_state"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise SbtError(f"{ckpt}: the checkpoint does not fit this run ({type(exc).__name__})") from None
        log(f"resumed at step {state.step:,} ({state.tokens:,} tokens)")
    total_steps = max(1, int(cfg.epochs * (len(data) // cfg.batch_size)))
    schedule = copy.copy(cfg)
    schedule.warmup_steps = min(cfg.warmup_steps, total_steps // 10)  # (a short run warms up for a tenth)
    model.train()
    t_start, loss_ema, seen = time.time() - state.wall_s, None, {}

    def checkpoint() -> None:
        state.wall_s = time.time() - t_start
        ckpt_io.save(ckpt, model=model.state_dict(), optimizer=opt.state_dict(), train_state=asdict(state),
                     config=asdict(cfg))

    def evaluate() -> None:
        model.eval()
        rep = greedy_accuracy(model, tok, val)
        model.train()
        point = {"step": state.step, "tokens": state.tokens, "wall_s": round(time.time() - t_start, 1),
                 "loss": round(loss_ema, 4) if loss_ema is not None and math.isfinite(loss_ema) else None,
                 "val_greedy": rep.accuracy, "val_ended_backtrack": rep.to_json()["ended_backtrack"],
                 **{k: round(v, 4) for k, v in seen.items()}}
        state.curve.append(point)
        log(json.dumps(point))
        best_file = out / "best" / "best.json"
        if rep.accuracy > _best_so_far(best_file):  # the best-on-val model too (selection on val only)
            save_trained(model, tok, out / "best", cfg)
            write_json(best_file, point)

    if saved is None:
        evaluate()  # step 0: the starting model, on the same val puzzles
    for step, epoch, rows in iterate(data, cfg.batch_size, cfg.seed, state.step):
        if step >= total_steps:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(schedule, step, total_steps)
        loss, n_tok, info = batch_loss(data, rows, model, ref, cfg, device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state.step, state.tokens = step + 1, state.tokens + n_tok
        value = float(loss)
        loss_ema = value if loss_ema is None else 0.95 * loss_ema + 0.05 * value
        seen = {k: v if k not in seen else 0.95 * seen[k] + 0.05 * v for k, v in info.items()}
        if on_step:
            on_step({"step": state.step, "total": total_steps, "loss": loss_ema, "epoch": epoch,
                     "tokens_per_s": state.tokens / max(time.time() - t_start, 1e-6)})
        if state.step % cfg.eval_every == 0:
            evaluate()
        if state.step % cfg.ckpt_every == 0:
            checkpoint()
    if not state.curve or state.curve[-1]["step"] != state.step:
        evaluate()
    checkpoint()
    save_trained(model, tok, out, cfg)
    report = {
        "command": command,
        "config": asdict(cfg),
        "objective": {"name": cfg.objective, "beta": cfg.beta, "reference": "the --base-model weights, frozen",
                      **({"pairs_per_puzzle": cfg.pairs} if cfg.objective == "dpo" else
                         {"desirable_weight": cfg.desirable_weight, "undesirable_weight": cfg.undesirable_weight})},
        "data": {"prefs": prefs_info, **data.counts(), "example_tokens": data.n_tokens},
        "params": sum(p.numel() for p in model.parameters()),
        "steps": state.step, "tokens": state.tokens, "wall_s": round(time.time() - t_start, 1),
        "hardware": _hardware(device), "device": str(device), "world_size": 1, "precision": "fp32",
        "compiled": False,
        "versions": {"sbt": __import__("sbt_core").__version__, "torch": torch.__version__,
                     "transformers": __import__("transformers").__version__},
        "base_model": base_info,
        "compute": training_compute(out, state.tokens, time.time() - t_start, _hardware(device), cfg.base_model),
        **_puzzle_kind(cfg.data_dir),
        "curve": state.curve,
        "final": state.curve[-1] if state.curve else None,
    }
    write_json(out / "training.json", report)
    return report


def training_compute(out: Path, tokens: int, wall_s: float, hardware: str, base: str | None) -> dict:
    """The training compute of a model: this run's and, through its base's training.json,
    every run before it (``total``: the sums), so models trained in several stages are
    compared at their whole cost."""
    this = {"tokens": int(tokens), "wall_s": round(wall_s, 1), "hardware": hardware}
    before = {"tokens": 0, "wall_s": 0.0}
    if base:
        try:
            prior = json.loads((Path(base) / "training.json").read_text())
            total = (prior.get("compute") or {}).get("total") or {"tokens": prior["tokens"], "wall_s": prior["wall_s"]}
            before = {"tokens": int(total["tokens"]), "wall_s": float(total["wall_s"])}
        except (OSError, ValueError, KeyError, TypeError):
            before = None  # a base without sbt's record: its compute is unknown
    total = None if before is None else {"tokens": before["tokens"] + this["tokens"],
                                         "wall_s": round(before["wall_s"] + this["wall_s"], 1)}
    return {"this_run": this, "before": before, "total": total}
