"""Fine-tuning objectives beside SFT (issue 25): the labelled data (``sbt harvest
--labelled``), its checks (train puzzles only, labels from the verifier), the DPO and KTO
losses pinned to TRL's trainers, GRPO's advantages, loss and verifier reward, and a tiny run
of each objective with checkpoint and resume."""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from harness.harvest import HarvestConfig, harvest, labelled_samples  # noqa: E402
from sbt_cli.app import app  # noqa: E402
from sbt_core.backends.base import Completion  # noqa: E402
from sbt_core.backends.scripted import ScriptedBackend, solver_continuation  # noqa: E402
from sbt_core.countdown import Puzzle  # noqa: E402
from sbt_core.errors import SbtError  # noqa: E402
from sbt_core.generate import read_puzzles  # noqa: E402
from sbt_core.trace import BACKTRACK, GOAL, prompt, render_solution  # noqa: E402

from _cli import one_error_line  # noqa: E402
from _train_fixtures import quick_countdown3  # noqa: E402

runner = CliRunner()
P = Puzzle((2, 3, 5), 30)
RIGHT = "5 * 3 = 15\n15 * 2 = 30\n" + GOAL
WRONG = "5 * 3 = 15\n15 * 2 = 31\n" + GOAL


def test_labelled_samples_are_distinct_and_labelled_by_the_verifier():
    comps = [Completion(WRONG, [1], [-0.01]),  # the likeliest: a false goal claim
             Completion(RIGHT, [1], [-0.5]),
             Completion(RIGHT, [1], [-0.4]),  # the same text again: kept once, at its best log-prob
             Completion("2 * 3 = 6\n6 * 5 = 30\n" + GOAL, [1], [-0.2]),
             Completion("2 * 3 = 6\n6 * 5 = 30\n" + BACKTRACK, [1], [-0.05], "stop"),  # no goal claim: failing
             Completion("2 * 3 = 6\n6 + 5", [1], [-0.3], "length")]
    got = labelled_samples(P, comps, 2)
    assert [(s["text"], s["verified"]) for s in got] == [
        ("2 * 3 = 6\n6 * 5 = 30\n" + GOAL, True), (RIGHT, True),
        (WRONG, False), ("2 * 3 = 6\n6 * 5 = 30\n" + BACKTRACK, False)]
    assert got[1]["mean_logprob"] == pytest.approx(-0.4) and got[0]["finish"] == "eos"
    assert labelled_samples(P, comps, 0) == [] and len(labelled_samples(P, comps, 9)) == 5


def half_sure(puzzle: Puzzle, prefix: list) -> str:
    """Right on even targets, a false goal claim on odd ones."""
    if puzzle.target % 2 == 0:
        return solver_continuation(puzzle, prefix)
    return render_solution([f"{puzzle.numbers[0]} + 1 = {puzzle.numbers[0] + 1}"])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return quick_countdown3(tmp_path_factory, "prefdata", 48)


@pytest.fixture(scope="module")
def prefs(tmp_path_factory, data_dir):
    """A labelled harvest of every train puzzle: a right and a wrong sample each (a scripted
    model that answers right, then wrong, by the sample's seed parity)."""
    from sbt_core.generate import read_puzzles

    out = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    harvest(HarvestConfig(model="scripted", numbers=3, data=str(data_dir), puzzles=48, n=2, labelled=2), out,
            ScriptedBackend(default=half_sure, model_name="scripted"), log=lambda m: None)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows and all(r["samples"] for r in rows)
    assert {s["verified"] for r in rows for s in r["samples"]} == {True, False}
    train = {p.key for p in read_puzzles(data_dir / "train.jsonl")}
    assert all(Puzzle.from_json(r).key in train for r in rows)
    # both labels on one puzzle: pair them by hand (the scripted model is sure of itself)
    with_pairs = []
    for r in rows:
        p = Puzzle.from_json(r)
        r["samples"] = [{"text": solver_continuation(p, []), "verified": True, "finish": "eos", "mean_logprob": -0.1},
                        {"text": render_solution([f"{p.numbers[0]} + 1 = {p.numbers[0] + 1}"]), "verified": False,
                         "finish": "eos", "mean_logprob": -0.2}]
        with_pairs.append(json.dumps(r) + "\n")
    out.write_text("".join(with_pairs))
    return out


def test_read_prefs_checks_split_labels_and_record(tmp_path, prefs, data_dir):
    from training.preference import dpo_pairs, read_prefs

    groups, info = read_prefs(prefs, data_dir)
    assert info["puzzles"] == len(groups) == 48 and info["harvest"]["labelled"] == 2
    pairs = dpo_pairs(groups, 5)
    assert len(pairs) == 48 and all(c.verified and not r.verified and c.puzzle == r.puzzle for c, r in pairs)
    # a puzzle of an evaluation split: refused, whatever the file says
    leak = read_puzzles(data_dir / "test_new.jsonl")[0]
    bad = tmp_path / "leak.jsonl"
    row = {"numbers": list(leak.numbers), "target": leak.target, "samples": []}
    bad.write_text(prefs.read_text() + json.dumps(row) + "\n")
    (tmp_path / "leak.jsonl.json").write_text(prefs.with_name(prefs.name + ".json").read_text())
    with pytest.raises(SbtError, match="evaluation split"):
        read_prefs(bad, data_dir)
    # a label the verifier does not give
    lie = tmp_path / "lie.jsonl"
    rows = [json.loads(x) for x in prefs.read_text().splitlines()]
    rows[3]["samples"][1]["verified"] = True
    lie.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "lie.jsonl.json").write_text(prefs.with_name(prefs.name + ".json").read_text())
    with pytest.raises(SbtError, match="labels come from the verifier"):
        read_prefs(lie, data_dir)
    # no harvest record, or one made without --labelled
    plain = tmp_path / "plain.jsonl"
    plain.write_text(prefs.read_text())
    with pytest.raises(SbtError, match="no harvest record"):
        read_prefs(plain, data_dir)
    (tmp_path / "plain.jsonl.json").write_text(json.dumps({"settings": {"labelled": 0}, "done": 1}))
    with pytest.raises(SbtError, match="without --labelled"):
        read_prefs(plain, data_dir)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Two tiny random models of sbt's kind (the policy and another as a reference)."""
    from sbt_core.tokenizer import build_tokenizer
    from training.model import new_model, save_model

    tok = build_tokenizer()
    root = tmp_path_factory.mktemp("tiny")
    return [save_model(new_model(tok, "tiny", seed=s), tok, root / f"m{s}") for s in (1, 2)]


def _batch_items(prefs, data_dir, n: int):
    from training.preference import dpo_pairs, read_prefs

    groups, _ = read_prefs(prefs, data_dir)
    return dpo_pairs(groups, 1)[:n]


def _hf(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("sft_weight", [0.0, 0.5])
def test_dpo_loss_is_trls(tmp_path, tiny_models, prefs, data_dir, sft_weight):
    """The same pairs, policy and reference: sbt's DPO loss (with RPO's chosen NLL term, as
    ``--sft-weight`` adds it) equals TRL's DPOTrainer's."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from sbt_core.hf import special_prefix
    from training.preference import Sequences, chosen_nll, dpo_loss, token_logps

    pairs = _batch_items(prefs, data_dir, 2)
    model, tok = _hf(tiny_models[0])
    ref, _ = _hf(tiny_models[1])
    seqs = Sequences(tok, special_prefix(tok), [c for c, _ in pairs] + [r for _, r in pairs])
    with torch.no_grad():
        batch = seqs.batch([0, 1, 2, 3])
        mask = batch["completion_mask"][:, 1:]
        per_token = token_logps(model, batch)
        pol, rl = (per_token * mask).sum(-1), (token_logps(ref, batch) * mask).sum(-1)
    ours = float(dpo_loss(pol[:2], pol[2:], rl[:2], rl[2:], 0.1)[0] + sft_weight * chosen_nll(per_token[:2], mask[:2]))
    rows = [{"prompt": prompt(c.puzzle), "chosen": c.text, "rejected": r.text} for c, r in pairs]
    extra = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, sft_weight]} if sft_weight else {}
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=2, max_steps=1,
                         learning_rate=1e-12, logging_steps=1, report_to="none", save_strategy="no", beta=0.1,
                         use_cpu=True, dataloader_num_workers=0, seed=0, disable_tqdm=True, **extra)
    trainer = trl.DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tok)
    trainer.train()
    theirs = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    assert ours == pytest.approx(theirs, abs=2e-4) and abs(ours - 0.6931) > 1e-3


def test_kto_loss_is_trls(tmp_path, tiny_models, prefs, data_dir):
    """The same samples, labels, policy and reference: sbt's KTO loss (with its KL estimate
    from the batch's mismatched pairs) equals TRL's KTOTrainer's."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from sbt_core.hf import special_prefix
    from training.preference import Sequences, completion_logps, kto_loss

    pairs = _batch_items(prefs, data_dir, 2)
    items = [pairs[0][0], pairs[0][1], pairs[1][1], pairs[1][0]]
    model, tok = _hf(tiny_models[0])
    ref, _ = _hf(tiny_models[1])
    seqs = Sequences(tok, special_prefix(tok), items)
    rows = [0, 1, 2, 3]
    with torch.no_grad():
        batch, kl = seqs.batch(rows), seqs.batch(rows, rows[-1:] + rows[:-1])
        loss = kto_loss(completion_logps(model, batch), completion_logps(ref, batch),
                        torch.tensor([x.verified for x in items]), completion_logps(model, kl),
                        completion_logps(ref, kl), 0.1)[0]
    data = [{"prompt": prompt(x.puzzle), "completion": x.text, "label": x.verified} for x in items]
    args = trl.KTOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, max_steps=1,
                         learning_rate=1e-12, logging_steps=1, report_to="none", save_strategy="no", beta=0.1,
                         use_cpu=True, dataloader_num_workers=0, seed=0, disable_tqdm=True,
                         train_sampling_strategy="sequential")
    trainer = trl.KTOTrainer(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(data),
                             processing_class=tok)
    trainer.train()
    theirs = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    assert float(loss) == pytest.approx(theirs, abs=2e-4)


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_a_tiny_run_trains_checkpoints_and_resumes(tmp_path, tiny_models, prefs, data_dir, objective):
    from training.config import TrainConfig
    from training.sft import train

    def cfg(epochs):
        return TrainConfig(out=str(tmp_path / objective), data_dir=str(data_dir), base_model=str(tiny_models[0]),
                           objective=objective, prefs_file=str(prefs), epochs=epochs, batch_size=16, lr=1e-3,
                           eval_every=1000, eval_puzzles=4, ckpt_every=1, threads=1,
                           sft_weight=1.0 if objective == "dpo" else 0.0)

    losses = []
    report = train(cfg(1.0), log=lambda m: None, on_step=lambda i: losses.append(i["loss"]))
    n = 48 if objective == "dpo" else 96
    assert report["steps"] == n // 16 == len(losses) and report["tokens"] > 0
    saved = json.loads((tmp_path / objective / "training.json").read_text())
    assert saved["objective"]["name"] == objective and saved["data"]["prefs"]["puzzles"] == 48
    assert saved["compute"]["this_run"]["tokens"] == report["tokens"] and saved["curve"][0]["step"] == 0
    assert saved["base_model"]["path"] == str(tiny_models[0])
    best = json.loads((tmp_path / objective / "best" / "training.json").read_text())  # a model dir of its own
    assert best["selected"] and best["steps"] == json.loads((tmp_path / objective / "best" / "best.json").read_text())["step"]
    from safetensors.torch import load_file

    before, after = load_file(tiny_models[0] / "model.safetensors"), load_file(tmp_path / objective / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    again = train(cfg(2.0), resume=True, log=lambda m: None)  # two epochs now: it goes on from step 3
    assert again["steps"] == 2 * (n // 16) and again["tokens"] > report["tokens"]


def test_cli_refuses_bad_preference_runs_in_one_line(tmp_path, tiny_models, prefs, data_dir):
    base = ["train", "--out", str(tmp_path / "m"), "--data-dir", str(data_dir)]
    one_error_line(runner.invoke(app, base + ["--objective", "dpo", "--base-model", str(tiny_models[0])]),
                   "--prefs")
    one_error_line(runner.invoke(app, base + ["--objective", "kto", "--prefs", str(prefs)]), "--base-model")
    one_error_line(runner.invoke(app, base + ["--objective", "dpo", "--prefs", str(tmp_path / "none.jsonl"),
                                              "--base-model", str(tiny_models[0])]), "not found")
    one_error_line(runner.invoke(app, base + ["--objective", "ppo"]), "--objective")
    one_error_line(runner.invoke(app, base + ["--objective", "grpo", "--prefs", str(prefs), "--base-model",
                                              str(tiny_models[0])]), "--prefs", "grpo")
    one_error_line(runner.invoke(app, base + ["--objective", "dpo", "--group", "4"]), "--group", "grpo")
    one_error_line(runner.invoke(app, base + ["--objective", "grpo", "--base-model", str(tiny_models[0]),
                                              "--group", "1"]), "--group")
    one_error_line(runner.invoke(app, base + ["--beta", "0.2"]), "--beta", "dpo or kto")
    one_error_line(runner.invoke(app, base + ["--objective", "dpo", "--prefs", str(prefs), "--base-model",
                                              str(tiny_models[0]), "--tokens", "1e6"]), "--epochs")
    one_error_line(runner.invoke(app, base + ["--objective", "dpo", "--prefs", str(prefs), "--base-model",
                                              str(tiny_models[0]), "--beta", "0"]), "--beta")


def test_grpo_advantages_and_loss():
    from training.grpo import group_advantages, grpo_loss

    adv = group_advantages(torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1]), 4)
    assert adv[4:].abs().max() < 1e-6  # a group that all scores the same teaches nothing
    assert adv[0] > 0 > adv[1] and adv[:4].sum().abs() < 1e-5
    assert float(adv[0]) == pytest.approx(0.75 / torch.tensor([1.0, 0, 0, 0]).std().item(), rel=1e-3)
    # the gradient is the policy gradient: -sum(A * d log p) over completion tokens / their count
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    a = torch.tensor([2.0, -1.0])
    loss = grpo_loss(logps, a, mask)
    loss.backward()
    assert float(loss) == pytest.approx(-(2.0 * 3 - 1.0 * 2) / 5)
    assert torch.allclose(logps.grad, -(a[:, None] * mask) / 5)


def test_a_tiny_grpo_run_rewards_what_the_verifier_accepts(tmp_path, tiny_models, data_dir, monkeypatch):
    """The reward is the verifier's judgement of each sampled answer (here a stand-in verifier
    that accepts about half of a random model's answers, so that the groups differ): the
    weights move, the samples are counted, and a resumed run goes on."""
    from training import grpo
    from training.config import TrainConfig
    from training.sft import train

    judged = []

    def half(puzzle, text):
        judged.append((puzzle, text))
        return len(text) % 2 == 0

    monkeypatch.setattr(grpo, "is_verified", half)

    def cfg(epochs):
        return TrainConfig(out=str(tmp_path / "grpo"), data_dir=str(data_dir), base_model=str(tiny_models[0]),
                           objective="grpo", epochs=epochs, batch_size=8, group=4, train_puzzles=16, lr=1e-3,
                           beta=0.04, eval_every=1000, eval_puzzles=4, ckpt_every=1, threads=1)

    steps = []
    report = train(cfg(1.0), log=lambda m: None, on_step=steps.append)
    assert report["steps"] == 2 and len(judged) == 2 * 8 * 4
    train_keys = {p.key for p in read_puzzles(data_dir / "train.jsonl", 16)}
    assert {p.key for p, _ in judged} <= train_keys
    saved = json.loads((tmp_path / "grpo" / "training.json").read_text())
    assert saved["objective"]["group"] == 4 and saved["generated_tokens"] > 0
    assert saved["compute"]["this_run"]["generated_tokens"] == saved["generated_tokens"]
    from safetensors.torch import load_file

    before, after = load_file(tiny_models[0] / "model.safetensors"), load_file(tmp_path / "grpo" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    again = train(cfg(2.0), resume=True, log=lambda m: None)
    assert again["steps"] == 4 and again["generated_tokens"] > saved["generated_tokens"]
