"""Training: masks pinned on hand-written examples, data properties, a tiny model learns, resume."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from sbt_core.countdown import Failure, Puzzle, Step, apply_step, verify
from sbt_core.solver import is_solvable
from sbt_core.tokenizer import build_tokenizer
from sbt_core.trace import parse_response
from training.data import Recipe, back_example, encode, examples_for, honest_last_example, op_example


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def trained_text(tok, ex):
    ids, labels = encode(ex, tok)
    return tok.decode([l for l in labels if l != -100])


def test_op_mask_trains_response_and_eos_only(tok):
    p = Puzzle((2, 3, 5), 30)
    ex = op_example(p, [Step(5, "*", 3, 15), Step(15, "*", 2, 30)])
    ids, labels = encode(ex, tok)
    assert ids[0] == tok.bos_token_id and labels[0] == -100
    assert trained_text(tok, ex) == "5 * 3 = 15\n15 * 2 = 30\nGoal Reached!<eos>"
    assert tok.decode(ids[1:-1]) == ex.text


def test_back_mask_hides_prompt_and_wrong_step(tok):
    p = Puzzle((2, 3, 5), 30)
    ex = back_example(p, [Step(5, "*", 3, 15)], Step(15, "+", 2, 18), "computational")
    assert ex.response == "5 * 3 = 15\n15 + 2 = 18\n<backtrack>"
    assert trained_text(tok, ex) == "5 * 3 = 15\n<backtrack><eos>"
    ex0 = back_example(p, [], Step(7, "-", 2, 5), "rule")
    assert trained_text(tok, ex0) == "<backtrack><eos>"


def test_honest_last_trains_the_true_result_of_a_missing_last_step(tok):
    p = Puzzle((2, 3, 5), 30)
    path = [Step(5, "*", 3, 15), Step(15, "*", 2, 30)]
    seen = set()
    for seed in range(40):
        ex = honest_last_example(p, path, random.Random(seed))
        last = ex.response.splitlines()[1]
        a, op, b, _, r = last.split()
        assert ex.kind == "honest-last" and ex.response.startswith("5 * 3 = 15\n") and ex.response.endswith("<backtrack>")
        assert int(r) == {"+": 17, "-": 13, "/": None}.get(op, int(r)) and int(r) != 30  # true result, not the target
        assert trained_text(tok, ex) == f"{r}\n<backtrack><eos>"
        seen.add(op)
    assert seen == {"+", "-"}  # 15 * 2 is the path's own step (the target); 15 / 2 is not exact
    lasts = {honest_last_example(Puzzle((3, 3), 9), [Step(3, "*", 3, 9)], random.Random(i)).response for i in range(30)}
    assert lasts == {"3 + 3 = 6\n<backtrack>", "3 - 3 = 0\n<backtrack>", "3 / 3 = 1\n<backtrack>"}


def test_honest_last_share_and_off_by_default():
    p, path = Puzzle((19, 90, 41, 32), 80), None
    base = [e.text for e in examples_for(p, Recipe(), random.Random(3))]
    assert base == [e.text for e in examples_for(p, Recipe(honest_last=0.0), random.Random(3))]
    kinds = [e.kind for e in examples_for(p, Recipe(honest_last=1.0), random.Random(3))]
    assert kinds.count("honest-last") == 1 and kinds[0] == "op"
    with pytest.raises(ValueError):
        Recipe(honest_last=1.5)


def test_op_only_recipe_has_no_backtracking():
    rng = random.Random(0)
    exs = examples_for(Puzzle((19, 90, 41, 32), 80), Recipe(data="op"), rng)
    assert [e.kind for e in exs] == ["op"]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000))
def test_generated_examples_are_right_and_wrong_as_labelled(seed):
    rng = random.Random(seed)
    numbers = tuple(rng.randint(1, 30) for _ in range(rng.choice([3, 4])))
    target = rng.randint(1, 60)
    if not is_solvable(numbers, target):
        return
    p = Puzzle(numbers, target)
    for ex in examples_for(p, Recipe(back_ratio=2.0), rng):
        resp = parse_response(ex.response)
        if ex.kind == "op":
            assert resp.reached_goal and verify(p, resp.steps).ok
            continue
        assert resp.backtracked
        *prefix, wrong = resp.steps
        state = tuple(sorted(p.numbers))
        for s in prefix:  # the prefix: correct steps (a partial solution, except before a goal claim)
            assert s.is_legal and s.is_correct
            state = apply_step(state, s)
        if ex.kind == "goal-claim":  # a dead end, then the nearest operation claiming the target
            assert len(state) == 2 and not is_solvable(state, target)
            assert sorted((wrong.a, wrong.b)) == sorted(state) and wrong.result == target and not wrong.is_correct
            assert ex.masked == [(0, len(ex.text) - len("<backtrack>"))]  # only <backtrack> (and eos) trained
            continue
        assert is_solvable(state, target)
        partial = verify(Puzzle(state, target), [wrong])
        if ex.kind == "exploration":
            assert wrong.is_correct and not is_solvable(apply_step(state, wrong), target)
        elif ex.kind == "computational":
            assert wrong.is_legal and not wrong.is_correct
            assert partial.failure == Failure.INCORRECT_RESULT or wrong.a not in state
        else:
            assert partial.failure in (Failure.UNKNOWN_NUMBER, Failure.ILLEGAL_OPERATION)


def test_goal_forcing_errors_claim_the_target_on_the_last_step():
    rng = random.Random(3)
    forced = computational = claims = 0
    for _ in range(300):
        numbers = tuple(rng.randint(1, 40) for _ in range(4))
        target = rng.randint(1, 80)
        if not is_solvable(numbers, target):
            continue
        p = Puzzle(numbers, target)
        for ex in examples_for(p, Recipe(kind_weights=(0, 1, 0), goal_forcing=0.5), rng):
            if ex.kind == "goal-claim":
                computational += 1
                claims += 1
                continue
            if ex.kind != "computational":
                continue
            computational += 1
            *prefix, wrong = parse_response(ex.response).steps
            state = tuple(sorted(p.numbers))
            for s in prefix:
                state = apply_step(state, s)
            if len(state) == 2 and wrong.result == target:
                forced += 1
                assert sorted((wrong.a, wrong.b)) == sorted(state) and wrong.is_legal and not wrong.is_correct
                assert ex.text.endswith(f"{wrong}\n<backtrack>") and (len(ex.prompt) + len(
                    "".join(f"{s}\n" for s in prefix)), len(ex.prompt) + len("".join(f"{s}\n" for s in prefix))
                    + len(f"{wrong}\n")) in ex.masked  # the fake step is masked, <backtrack> trained
    # half the goal-forcing examples on the solution path, half after a dead end
    assert computational > 100 and 0.35 < (forced + claims) / computational < 0.65
    assert 0.15 < claims / computational < 0.35 and 0.15 < forced / computational < 0.35
    with pytest.raises(ValueError):
        Recipe(goal_forcing=1.5)


def test_kind_ratio_roughly_follows_weights():
    rng = random.Random(1)
    from collections import Counter

    kinds = Counter()
    for i in range(400):
        p = Puzzle((rng.randint(1, 99), rng.randint(1, 99), rng.randint(1, 99), rng.randint(1, 99)), 0)
        from sbt_core.solver import solve

        sol = solve(Puzzle(p.numbers, 50))
        if sol:
            kinds.update(e.kind for e in examples_for(Puzzle(p.numbers, 50), Recipe(), rng))
    back = kinds["exploration"] + kinds["computational"] + kinds["goal-claim"] + kinds["rule"]
    assert abs(back / kinds["op"] - 1.0) < 0.05
    assert 0.1 < kinds["exploration"] / back < 0.3


@pytest.fixture()
def tiny_data(tmp_path):
    from sbt_core.generate import GeneratorConfig, generate

    d = tmp_path / "data"
    generate(GeneratorConfig(n_numbers=3, sizes={"train": 300, "val": 20, "test_seen": 0, "test_new": 0}), d, workers=1)
    return d


def _cfg(tmp_path, data_dir, **kw):
    from training.sft import TrainConfig

    base = dict(out=str(tmp_path / "model"), data_dir=str(data_dir), size="tiny", max_tokens=60_000,
                batch_size=32, lr=5e-3, warmup_steps=5, eval_every=1000, eval_puzzles=5, ckpt_every=10, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_tiny_model_loss_falls_and_saves_hf_dir(tmp_path, tiny_data):
    from training.sft import train

    losses = []
    report = train(_cfg(tmp_path, tiny_data), log=lambda m: None, on_step=lambda i: losses.append(i["loss"]))
    assert losses[-1] < losses[0] - 0.5
    out = tmp_path / "model"
    for f in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "training.json"):
        assert (out / f).is_file(), f
    saved = json.loads((out / "training.json").read_text())
    assert saved["steps"] == report["steps"] and saved["config"]["seed"] == 0 and saved["curve"]
    meta = json.loads((Path(tiny_data) / "meta.json").read_text())  # what sbt solve picks the model for
    assert (saved["n_numbers"], saved["rules"]) == (meta["n_numbers"], "all")
    best = json.loads((out / "best" / "best.json").read_text())  # the best-on-val model is kept
    assert best["val_greedy"] == max(p["val_greedy"] for p in saved["curve"])
    assert (out / "best" / "model.safetensors").is_file()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_tokens_to_ids("<backtrack>") != tok.unk_token_id
    AutoModelForCausalLM.from_pretrained(out)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16-master"])
def test_every_precision_trains_and_saves_float32(tmp_path, tiny_data, precision):
    import torch
    from safetensors.torch import load_file
    from training.sft import train

    losses = []
    report = train(_cfg(tmp_path, tiny_data, precision=precision, max_tokens=30_000), log=lambda m: None,
                   on_step=lambda i: losses.append(i["loss"]))
    assert losses[-1] < losses[0] - 0.3
    assert report["precision"] == {"bf16": "bf16-autocast"}.get(precision, precision) and not report["compiled"]
    weights = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in weights.values())  # master weights, not the bf16 copy


def test_precision_and_compile_choices():
    import torch
    from training.stepper import resolve_compile, resolve_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu, True) == "bf16-master"
    assert resolve_precision("auto", cpu, False) == "fp32"
    assert resolve_precision("auto", cuda, False) == "bf16"
    assert resolve_precision("fp32", cpu, True) == "fp32"
    with pytest.raises(ValueError):
        resolve_precision("fp8", cpu, True)
    assert not resolve_compile("auto", cpu, 10)  # a short run never pays the compile time back
    assert resolve_compile("on", cpu, 10) and not resolve_compile("off", cpu, 10_000)
    assert not resolve_compile("auto", cuda, 10_000)


def test_failed_compile_falls_back_to_eager_training(tmp_path, tiny_data, monkeypatch):
    import torch
    from training.sft import train

    def broken_compile(module, **kw):
        def run(**inputs):
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    logs = []
    report = train(_cfg(tmp_path, tiny_data, compile="on", max_tokens=10_000), log=logs.append)
    assert any("torch.compile failed" in m for m in logs) and not report["compiled"] and report["steps"] > 0


def test_resume_continues_exactly(tmp_path, tiny_data):
    import torch
    from training.sft import train

    full = train(_cfg(tmp_path / "a", tiny_data), log=lambda m: None)
    cut = _cfg(tmp_path / "b", tiny_data, max_tokens=60_000)
    # stop after 10 steps by training a shorter run sharing the same schedule
    from training import sft

    with pytest.raises(KeyboardInterrupt):
        train(cut, log=lambda m: None, on_step=lambda i: (_ for _ in ()).throw(KeyboardInterrupt) if i["step"] == 12 else None)
    resumed = train(cut, resume=True, log=lambda m: None)
    assert resumed["steps"] == full["steps"]
    from training.checkpoint import load

    a = load(tmp_path / "a" / "model" / "checkpoint")["model"]
    b = load(tmp_path / "b" / "model" / "checkpoint")["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_weight_average_folds_in_steps_and_restores_raw_weights():
    import torch
    from training.ema import WeightAverage

    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    avg = WeightAverage(model, 0.5)
    with torch.no_grad():
        model.weight.fill_(4.0)
    avg.update()  # first update: decay min(0.5, 2/11) -> 2/11
    assert torch.allclose(avg.shadow[0], torch.full((1, 2), 4.0 * 9 / 11))
    with avg.applied():
        assert torch.allclose(model.weight, avg.shadow[0])
    assert torch.allclose(model.weight, torch.full((1, 2), 4.0))  # raw weights back after the block
    with pytest.raises(ValueError):
        WeightAverage(model, 1.0)


def test_ema_run_saves_the_average_and_resumes_it(tmp_path, tiny_data):
    import torch
    from safetensors.torch import load_file
    from training.sft import train

    full = train(_cfg(tmp_path / "a", tiny_data, ema=0.9, max_tokens=20_000), log=lambda m: None)
    assert full["config"]["ema"] == 0.9
    from training.checkpoint import load

    state = load(tmp_path / "a" / "model" / "checkpoint")
    shipped = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    raw, shadow = state["model"], state["ema"]["shadow"]
    names = [n for n, _ in _loaded(tmp_path / "a" / "model").named_parameters()]  # the order of the shadow
    # the saved model is the average, not the last raw weights
    key = "model.layers.0.mlp.down_proj.weight"
    i = names.index(key)
    assert torch.allclose(shipped[key], shadow[i]) and not torch.allclose(shipped[key], raw[key])
    cut = _cfg(tmp_path / "b", tiny_data, ema=0.9, max_tokens=20_000)
    with pytest.raises(KeyboardInterrupt):
        train(cut, log=lambda m: None, on_step=lambda i: (_ for _ in ()).throw(KeyboardInterrupt) if i["step"] == 12 else None)
    train(cut, resume=True, log=lambda m: None)
    resumed = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert torch.allclose(resumed[key], shipped[key], atol=1e-5)  # the average survived the stop


def _loaded(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def test_existing_checkpoint_needs_resume(tmp_path, tiny_data):
    from sbt_core.errors import SbtError
    from training.sft import train

    train(_cfg(tmp_path, tiny_data, max_tokens=5_000), log=lambda m: None)
    with pytest.raises(SbtError, match="--resume"):
        train(_cfg(tmp_path, tiny_data, max_tokens=5_000), log=lambda m: None)


def test_base_model_dir_is_fine_tuned_with_backtrack_token(tmp_path, tiny_data):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    # a foreign tokenizer (character level, no <backtrack>) and a random GPT-2 made here
    chars = sorted(set("0123456789+-*/=[], \n#:>QuestionumbrsRpGlachd!targe"))
    vocab = {c: i for i, c in enumerate(["<|endoftext|>", "<unk>"] + chars)}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Split("", "isolated") if False else pre_tokenizers.Split(
        __import__("tokenizers").Regex(r"[\s\S]"), "isolated")
    t.decoder = decoders.Fuse()
    ftok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>", unk_token="<unk>")
    base = tmp_path / "base"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(ftok), n_embd=32, n_layer=1, n_head=2, n_positions=256)).save_pretrained(base)
    ftok.save_pretrained(base)
    from training.sft import train

    train(_cfg(tmp_path, tiny_data, base_model=str(base), max_tokens=3_000, attn=""), log=lambda m: None)
    tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    assert len(tok) == len(ftok) + 1
    assert tok.convert_tokens_to_ids("<backtrack>") == len(ftok)


def test_verifier_stats_precision_and_recall():
    from sbt_core.solver import first_wrong_step
    from sbt_core.trace import parse_response
    from training.verifier_stats import VerifierStats

    p = Puzzle((2, 3, 5), 30)
    cases = {
        "5 * 3 = 15\n15 * 2 = 30\nGoal Reached!": None,  # right
        "5 + 3 = 8\n<backtrack>": 0,  # dead end, caught
        "5 * 3 = 16\n<backtrack>": 0,  # wrong result, caught
        "5 * 3 = 15\n<backtrack>": None,  # needless backtrack
        "5 + 3 = 8\n8 * 2 = 16\nGoal Reached!": 0,  # missed
        "garbage\n<backtrack>": 0,
    }
    stats = VerifierStats()
    for text, wrong in cases.items():
        resp = parse_response(text)
        assert first_wrong_step(p, resp.steps) == wrong, text
        stats.add(p, resp)
    assert stats.ended_backtrack == 4
    assert stats.precision == 3 / 4
    assert stats.recall == 3 / 4


def test_model_card_names_the_base_model_and_the_weight_average(tmp_path):
    from training.model_card import render

    info = {"config": {"data": "op+back", "data_dir": str(tmp_path), "size": "small", "batch_size": 256, "lr": 5e-4,
                       "warmup_steps": 200, "seed": 2, "base_model": "models/countdown4-backtrack", "ema": 0.995},
            "data": {"train_file": "t.jsonl", "examples": 10, "example_tokens": 400, "recipe": {"data": "op+back"}},
            "params": 3_400_000, "steps": 5, "tokens": 1000, "wall_s": 60, "precision": "fp32", "hardware": "CPU",
            "versions": {"torch": "x", "transformers": "y"}, "command": "sbt train --base-model models/countdown4-backtrack",
            "curve": [{"step": 5, "tokens": 1000, "wall_s": 60, "loss": 0.2, "val_greedy": 0.5, "val_ended_backtrack": 0.1}]}
    (tmp_path / "training.json").write_text(json.dumps(info))
    card = render(tmp_path)
    assert "fine-tuned from `models/countdown4-backtrack`" in card and "from scratch" not in card
    assert "EMA decay 0.995" in card and "| 5 | 1,000 | 1.0 | 0.2 | 50.0% | 10.0% |" in card


@pytest.mark.parametrize("terminal", [True, False])
def test_train_cli_shows_a_bar_on_a_terminal_and_log_lines_elsewhere(tmp_path, tiny_data, monkeypatch, terminal):
    # on a terminal the bar is drawn before the first step, while the step total is unknown
    from typer.testing import CliRunner

    from sbt_cli.app import app

    monkeypatch.setenv("TTY_INTERACTIVE", "1" if terminal else "0")  # rich's switch for an interactive console
    r = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "m"), "--numbers", "3", "--data-dir", str(tiny_data),
                                 "--size", "tiny", "--tokens", "2000", "--batch-size", "4", "--eval-every", "1000",
                                 "--eval-puzzles", "2", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m" / "model.safetensors").is_file()
    steps = json.loads((tmp_path / "m" / "training.json").read_text())["steps"]
    log_line = f"step {steps:,}/{steps:,} loss"  # the last step is always logged
    assert (log_line in r.output) is not terminal, r.output
    assert "Writing model shards" not in r.output  # no transformers bars in our output


# --------------------------------------------------------------------------- val greedy


def _val_puzzles(name: str, n: int) -> list[Puzzle]:
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "data" / name / "val.jsonl"
    with open(path) as f:
        return [Puzzle.from_json(json.loads(next(f))) for _ in range(n)]


def test_val_greedy_is_the_greedy_sbt_bench_runs(monkeypatch):
    """training.json's "val greedy" is computed by sbt's greedy method (what `sbt bench
    --methods greedy` runs), not by a second greedy loop: same verdicts, same failures."""
    from dataclasses import replace

    from sbt_core.backends.torch_backend import TorchBackend
    from sbt_core.models import resolve_model
    from sbt_core.search import METHODS, run_search
    from training.evaluate import greedy_accuracy, greedy_texts

    puzzles = _val_puzzles("countdown3", 12)
    path = resolve_model("countdown3-backtrack")
    backend = TorchBackend(path)  # as `sbt bench` loads it
    bench = [run_search("greedy", p, backend, {}, seed=i) for i, p in enumerate(puzzles)]
    model, tok = backend.model, backend.tokenizer  # the weights, as a training loop holds them
    model.train()
    calls = []
    greedy = METHODS["greedy"]

    def spy(puzzle, *a, **k):
        calls.append(puzzle)
        return greedy.run(puzzle, *a, **k)

    monkeypatch.setitem(METHODS, "greedy", replace(greedy, run=spy))
    rep = greedy_accuracy(model, tok, puzzles)
    assert calls == puzzles and model.training
    assert rep.n == 12 and rep.solved == sum(r.verdict.ok for r in bench) > 0
    failures = {}
    for r in bench:
        if not r.verdict.ok:
            failures[str(r.verdict.failure)] = failures.get(str(r.verdict.failure), 0) + 1
    assert rep.failures == failures
    one_by_one = greedy_accuracy(model, tok, puzzles, batch_size=1)  # bench's calls exactly
    assert (one_by_one.solved, one_by_one.failures, one_by_one.ended_backtrack) == \
        (rep.solved, rep.failures, rep.ended_backtrack)
    texts = greedy_texts(model, tok, puzzles[:3])
    assert [parse_response(t).lines for t in texts] == [r.lines for r in bench[:3]]


def test_val_greedy_leaves_the_training_model_as_it_was():
    import torch

    from training.evaluate import greedy_accuracy
    from training.model import new_model

    tok = build_tokenizer()
    model = new_model(tok, "tiny", seed=0)
    model.train()
    threads, device = torch.get_num_threads(), next(model.parameters()).device
    rep = greedy_accuracy(model, tok, _val_puzzles("countdown3", 2))
    assert rep.n == 2 and rep.failures == {"no_answer": 2}  # untrained: no step lines, as bench counts it
    assert model.training and next(model.parameters()).device == device and torch.get_num_threads() == threads
