"""Hardening of ``sbt train``, ``sbt harvest`` and ``sbt iterate`` (issue 20).

Checkpoints are data (safetensors + JSON; a legacy ``state.pt`` is read with
``weights_only=True`` only), resume writes only to ``--out`` and refuses a changed setting,
one writer per output (locks), ``--paths`` drops duplicate puzzles, and impossible settings
are refused at once (one line, exit 2, before torch is imported).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from typer.testing import CliRunner

from sbt_cli.app import app
from sbt_core.locks import output_lock

from _train_fixtures import half_right, quick_countdown3
from _cli import one_error_line

runner = CliRunner()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return quick_countdown3(tmp_path_factory, "hardtrain", 60)


def train_args(out, data_dir, *extra):
    return ["train", "--out", str(out), "--numbers", "3", "--data-dir", str(data_dir), "--size", "tiny",
            "--tokens", "1500", "--batch-size", "4", "--eval-every", "1000", "--eval-puzzles", "2",
            "--threads", "1", "--ckpt-every", "5", "--quiet", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """A finished tiny CLI run (checkpoint every 5 steps)."""
    out = tmp_path_factory.mktemp("hardrun") / "A"
    r = runner.invoke(app, train_args(out, data_dir))
    assert r.exit_code == 0, r.output
    return out


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- 1. no pickle


def test_checkpoint_and_dataset_cache_are_safetensors_and_json_only(trained):
    from safetensors import safe_open

    files = sorted(p for p in (trained / "checkpoint").iterdir())
    assert files and all(p.suffix in (".safetensors", ".json") for p in files), files
    assert any(p.name.startswith("dataset-") for p in files)
    for p in files:
        if p.suffix == ".json":
            json.loads(p.read_text())  # strict JSON
        else:
            with safe_open(str(p), "pt") as f:
                assert list(f.keys())


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_legacy_state_pt_that_would_run_code_is_refused(tmp_path, data_dir, how):
    import pickle

    import torch

    out, marker = tmp_path / "run", tmp_path / "PWNED"
    (out / "checkpoint").mkdir(parents=True)
    payload = {"model": {}, "optimizer": {}, "train_state": {}, "config": _Evil(marker)}
    if how == "torch.save":
        torch.save(payload, out / "checkpoint" / "state.pt")
    else:
        (out / "checkpoint" / "state.pt").write_bytes(pickle.dumps(payload))
    r = runner.invoke(app, train_args(out, data_dir, "--resume"))
    assert not marker.exists()  # the pickle's code never ran
    one_error_line(r, "state.pt")


@pytest.mark.parametrize("damage", ["empty", "random", "truncated"])
def test_a_damaged_legacy_state_pt_is_one_line(tmp_path, data_dir, damage):
    import torch

    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    f = out / "checkpoint" / "state.pt"
    torch.save({"model": {"w": torch.zeros(1000)}, "optimizer": {}, "train_state": {}, "config": {}}, f)
    f.write_bytes({"empty": b"", "random": os.urandom(4096), "truncated": f.read_bytes()[:700]}[damage])
    one_error_line(runner.invoke(app, train_args(out, data_dir, "--resume")), "state.pt")


@pytest.mark.parametrize("which", ["state.json", "tensors"])
@pytest.mark.parametrize("damage", ["empty", "random", "truncated"])
def test_a_damaged_checkpoint_file_is_one_line_naming_it(tmp_path, trained, data_dir, which, damage):
    out = tmp_path / "C"
    shutil.copytree(trained, out)
    ckpt = out / "checkpoint"
    f = ckpt / "state.json" if which == "state.json" else next(ckpt.glob("state-*.safetensors"))
    f.write_bytes({"empty": b"", "random": os.urandom(4096), "truncated": f.read_bytes()[: f.stat().st_size // 2]}[damage])
    one_error_line(runner.invoke(app, train_args(out, data_dir, "--resume", "--tokens", "3000")), f.name)


def test_a_kill_between_the_tensor_file_and_the_json_resumes_from_the_previous_checkpoint(tmp_path, data_dir, monkeypatch):
    """The JSON is written last: a stop after the new tensors but before the new JSON leaves the
    previous checkpoint whole, and resuming from it gives the uninterrupted run's weights."""
    import torch

    from training import checkpoint as ck
    from training.sft import TrainConfig, train

    def cfg(name):
        return TrainConfig(out=str(tmp_path / name), data_dir=str(data_dir), size="tiny", max_tokens=8_000,
                           batch_size=8, lr=5e-3, warmup_steps=3, eval_every=1000, eval_puzzles=2, ckpt_every=10,
                           threads=1)

    train(cfg("a"), log=lambda m: None)
    real, calls = ck._write_json, []

    def dying(path, obj):
        if path.name == "state.json":
            calls.append(path)
            if len(calls) == 2:  # the second checkpoint's JSON: killed before it is written
                raise KeyboardInterrupt
        real(path, obj)

    monkeypatch.setattr(ck, "_write_json", dying)
    with pytest.raises(KeyboardInterrupt):
        train(cfg("b"), log=lambda m: None)
    monkeypatch.setattr(ck, "_write_json", real)
    assert ck.load(tmp_path / "b" / "checkpoint")["train_state"]["step"] == 10  # the first checkpoint
    resumed = train(cfg("b"), resume=True, log=lambda m: None)
    a, b = (ck.load(tmp_path / n / "checkpoint") for n in ("a", "b"))
    assert resumed["steps"] == a["train_state"]["step"] == b["train_state"]["step"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert len(list((tmp_path / "b" / "checkpoint").glob("state-*.safetensors"))) == 1  # older tensors removed


def test_a_legacy_weights_only_state_pt_still_resumes_and_is_replaced(tmp_path, data_dir):
    import torch

    from training import checkpoint as ck
    from training.sft import TrainConfig, train

    def cfg(name, tokens):
        return TrainConfig(out=str(tmp_path / name), data_dir=str(data_dir), size="tiny", max_tokens=tokens,
                           batch_size=8, lr=5e-3, warmup_steps=3, eval_every=1000, eval_puzzles=2, ckpt_every=5,
                           threads=1)

    full = train(cfg("a", 6_000), log=lambda m: None)

    def stop(info):
        if info["step"] == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg("b", 6_000), log=lambda m: None, on_step=stop)
    ckpt = tmp_path / "b" / "checkpoint"
    old = ck.load(ckpt)  # written as an earlier version did: one torch.save'd dict
    torch.save(old, ckpt / "state.pt")
    for p in ckpt.glob("state*"):
        if p.suffix != ".pt":
            p.unlink()
    resumed = train(cfg("b", 6_000), resume=True, log=lambda m: None)
    assert resumed["steps"] == full["steps"]
    assert not (ckpt / "state.pt").exists() and (ckpt / "state.json").is_file()
    a, b = ck.load(tmp_path / "a" / "checkpoint"), ck.load(ckpt)
    assert all(torch.allclose(a["model"][k], b["model"][k], atol=1e-6) for k in a["model"])


# --------------------------------------------------------------------------- 2. resume writes only to --out


def test_resume_of_a_copied_run_writes_only_to_the_given_out(tmp_path, trained, data_dir):
    before = snapshot(trained)
    copy = tmp_path / "C"
    shutil.copytree(trained, copy)
    r = runner.invoke(app, train_args(copy, data_dir, "--resume", "--tokens", "3000"))
    assert r.exit_code == 0, r.output
    assert f"saved {copy}:" in r.output
    assert snapshot(trained) == before  # the original run is untouched
    a = json.loads((trained / "training.json").read_text())
    c = json.loads((copy / "training.json").read_text())
    assert c["steps"] > a["steps"] and c["config"]["out"] == str(copy)
    moved = tmp_path / "M"
    shutil.move(str(copy), moved)  # a moved run resumes in place
    r = runner.invoke(app, train_args(moved, data_dir, "--resume", "--tokens", "4000"))
    assert r.exit_code == 0, r.output
    assert json.loads((moved / "training.json").read_text())["steps"] > c["steps"]


def test_resume_refuses_a_changed_setting_and_names_it(tmp_path, trained, data_dir):
    copy = tmp_path / "C"
    shutil.copytree(trained, copy)
    before = snapshot(copy)
    line = one_error_line(runner.invoke(app, train_args(copy, data_dir, "--resume", "--seed", "1", "--lr", "0.01")),
                          "--seed", "--lr")
    assert "--tokens 1500" not in line  # given, but the same as the checkpoint's
    one_error_line(runner.invoke(app, [*train_args(copy, data_dir, "--resume"), "--size", "small"]), "--size")
    one_error_line(runner.invoke(app, [*train_args(copy, data_dir, "--resume"), "--data", "op"]), "--data")
    assert snapshot(copy) == before
    # the same values given again, and the options that may change, are fine
    r = runner.invoke(app, train_args(copy, data_dir, "--resume", "--seed", "0", "--tokens", "2500",
                                      "--eval-every", "500", "--ckpt-every", "3"))
    assert r.exit_code == 0, r.output


def test_training_json_command_comes_from_the_argument(tmp_path, data_dir, monkeypatch):
    from training.sft import TrainConfig, train

    monkeypatch.setenv("SBT_TRAIN_COMMAND", "sbt something else")
    cfg = TrainConfig(out=str(tmp_path / "m"), data_dir=str(data_dir), size="tiny", max_tokens=300, batch_size=4,
                      eval_every=1000, eval_puzzles=2, threads=1)
    report = train(cfg, log=lambda m: None, command="sbt train --out m")
    assert report["command"] == "sbt train --out m"


# --------------------------------------------------------------------------- 3. locks and duplicates


def test_a_second_train_into_a_busy_out_is_refused(tmp_path, data_dir):
    out = tmp_path / "busy"
    with output_lock(out, is_dir=True, what="--out"):
        r = runner.invoke(app, train_args(out, data_dir))
    one_error_line(r, f"pid {os.getpid()}")
    assert not [p for p in out.rglob("*") if p.name != ".sbt.lock"]  # nothing written


def test_a_second_train_process_is_refused_while_the_first_runs(tmp_path, data_dir):
    out = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from sbt_core.locks import output_lock\n"
                               f"with output_lock({str(out)!r}, is_dir=True, what='--out'):\n"
                               "    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        one_error_line(runner.invoke(app, train_args(out, data_dir)), f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()


def test_a_second_harvest_into_the_same_file_is_refused_before_the_model_loads(tmp_path, data_dir, monkeypatch):
    import sbt_core.backends as backends

    def no_load(*a):
        raise AssertionError("the model loaded")

    monkeypatch.setattr(backends, "load_backend", no_load)
    out = tmp_path / "h.jsonl"
    with output_lock(out, is_dir=False, what="--out"):
        r = runner.invoke(app, ["harvest", "--out", str(out), "--model", "countdown3-x", "--data", str(data_dir),
                                "--puzzles", "4", "--n", "2", "-q"])
    one_error_line(r, f"pid {os.getpid()}")
    assert not out.exists()


def test_harvest_api_holds_the_lock_of_its_file(tmp_path, data_dir):
    from harness.harvest import HarvestConfig, harvest
    from sbt_core.backends.scripted import ScriptedBackend
    from sbt_core.locks import OutputBusyError

    out = tmp_path / "h.jsonl"
    cfg = HarvestConfig(model="s", numbers=3, data=str(data_dir), puzzles=4, n=2)
    with output_lock(out, is_dir=False):
        with pytest.raises(OutputBusyError):
            harvest(cfg, out, ScriptedBackend(default=half_right, model_name="s"), log=lambda m: None)


def test_a_second_iterate_into_the_same_out_is_refused(tmp_path, data_dir, tmp_path_factory):
    from sbt_core.tokenizer import build_tokenizer
    from training.model import new_model, save_model

    tok = build_tokenizer()
    start = save_model(new_model(tok, "tiny", seed=1), tok, tmp_path / "tiny-start")
    out = tmp_path / "it"
    with output_lock(out, is_dir=True, what="--out"):
        r = runner.invoke(app, ["iterate", "--model", str(start), "--numbers", "3", "--data", str(data_dir),
                                "--rounds", "1", "--train-puzzles", "4", "--n", "2", "--eval-limit", "2",
                                "--out", str(out), "--db", str(tmp_path / "r.db"), "--experiment", "t", "-q"])
    one_error_line(r, f"pid {os.getpid()}")


def _dup_paths(tmp_path):
    rows = [{"numbers": [2, 3, 5], "target": 30, "steps": ["2 * 3 = 6", "6 * 5 = 30"]},
            {"numbers": [4, 6, 7], "target": 17, "steps": ["6 + 4 = 10", "10 + 7 = 17"]},
            {"numbers": [5, 3, 2], "target": 30, "steps": ["5 * 3 = 15", "15 * 2 = 30"]},  # same puzzle
            {"numbers": [2, 3, 5], "target": 30, "steps": ["2 * 3 = 6", "6 * 5 = 30"]},  # same line again
            {"numbers": [2, 3, 5], "target": 31, "steps": ["2 * 3 = 6", "6 * 5 = 30"]}]  # not verified
    f = tmp_path / "paths.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def test_path_examples_drop_duplicate_puzzles_keeping_the_first(tmp_path):
    from training.data import path_examples

    counts = {}
    examples, dropped = path_examples(_dup_paths(tmp_path), counts=counts)
    assert [e.response.splitlines()[0] for e in examples] == ["2 * 3 = 6", "6 + 4 = 10"]
    assert dropped == 1 and counts["duplicates"] == 2


def test_train_paths_drops_duplicates_and_says_how_many(tmp_path, data_dir):
    f = _dup_paths(tmp_path)
    r = runner.invoke(app, train_args(tmp_path / "m", data_dir, "--paths", str(f), "--data", "op", "--tokens", "200"))
    assert r.exit_code == 0, r.output
    assert "2 duplicate" in r.output
    report = json.loads((tmp_path / "m" / "training.json").read_text())
    assert report["data"]["examples"] == 2 and report["data"]["given_paths"]["duplicates"] == 2


# --------------------------------------------------------------------------- 4. impossible settings

BAD_TRAIN = [
    (["--batch-size", "-4"], "--batch-size"), (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "100000"], "1024"), (["--size", "bogus"], "--size"), (["--lr", "nan"], "--lr"),
    (["--lr", "-1"], "--lr"), (["--lr", "inf"], "--lr"), (["--ckpt-every", "0"], "--ckpt-every"),
    (["--threads", "-1"], "--threads"), (["--tokens", "nan"], "--tokens"), (["--tokens", "inf"], "--tokens"),
    (["--tokens", "0"], "--tokens"), (["--tokens", "-5"], "--tokens"), (["--tokens", "1e15"], "--tokens"),
    (["--train-puzzles", "0"], "--train-puzzles"), (["--train-puzzles", "-1"], "--train-puzzles"),
    (["--eval-puzzles", "-1"], "--eval-puzzles"), (["--eval-every", "0"], "--eval-every"),
    (["--back-ratio", "-1"], "--back-ratio"), (["--back-ratio", "nan"], "--back-ratio"),
    (["--goal-forcing", "2"], "--goal-forcing"), (["--own-errors", "-1"], "--own-errors"),
    (["--honest-last", "nan"], "--honest-last"), (["--ema", "1.5"], "--ema"), (["--ema", "nan"], "--ema"),
    (["--data", "bogus"], "--data"), (["--precision", "bogus"], "--precision"), (["--compile", "bogus"], "--compile"),
    (["--kinds", "1:inf:1"], "--kinds"), (["--seed", "-1"], "--seed"),
]


def test_impossible_train_settings_are_one_line_at_once_before_torch_loads(tmp_path, data_dir):
    """In a fresh process (torch not yet imported), with a timeout: --batch-size -4 used to spin forever."""
    script = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from sbt_cli.app import app\n"
        "r = CliRunner()\n"
        "res = [(x.exit_code, x.output) for x in (r.invoke(app, a) for a in json.loads(sys.argv[1]))]\n"
        "print(json.dumps({'results': res, 'torch': 'torch' in sys.modules}))\n")
    huge = tmp_path / "huge"  # a base model whose config.json would allocate terabytes
    huge.mkdir()
    (huge / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 40, "hidden_size": 2**30,
                                                  "num_hidden_layers": 2, "num_attention_heads": 2,
                                                  "intermediate_size": 64}))
    bad_cases = [*BAD_TRAIN, (["--base-model", str(huge)], "hidden_size")]
    cases = [train_args(tmp_path / f"m{i}", data_dir, *bad) for i, (bad, _) in enumerate(bad_cases)]
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    for (bad, needle), (code, output) in zip(bad_cases, got["results"]):
        lines = [x for x in output.splitlines() if x.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (bad, output)
    assert not got["torch"]
    assert not any((tmp_path / f"m{i}").exists() for i in range(len(bad_cases)))  # nothing written


@pytest.mark.parametrize("bad,needle", [
    (["--temperature", "nan"], "--temperature"), (["--temperature", "inf"], "--temperature"),
    (["--temperature", "1e-40"], "--temperature"), (["--temperature", "0"], "--temperature"),
    (["--n", "5000"], "1024"), (["--mistakes", "5000"], "1024"), (["--puzzles", "100000000"], "10,000,000"),
    (["--seed", "-1"], "--seed"),
])
def test_harvest_refuses_bad_budgets_before_the_model_loads(tmp_path, data_dir, monkeypatch, bad, needle):
    import sbt_core.backends as backends

    def no_load(*a):
        raise AssertionError("the model loaded")

    monkeypatch.setattr(backends, "load_backend", no_load)
    r = runner.invoke(app, ["harvest", "--out", str(tmp_path / "h.jsonl"), "--model", "countdown3-x",
                            "--data", str(data_dir), "--puzzles", "4", "-q", *bad])
    one_error_line(r, needle)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("bad,needle", [
    (["--temperature", "nan"], "--temperature"), (["--temperature", "inf"], "--temperature"),
    (["--temperature", "1e-40"], "--temperature"), (["--n", "5000"], "1024"), (["--b", "99"], "16"),
    (["--tokens", "nan"], "--tokens"), (["--tokens", "1e15"], "--tokens"), (["--lr", "nan"], "--lr"),
    (["--batch-size", "100000"], "1024"), (["--threads", "100000"], "--threads"),
    (["--train-puzzles", "100000000"], "10,000,000"), (["--rounds", "1000"], "--rounds"),
])
def test_iterate_refuses_bad_settings_before_anything_runs(tmp_path, data_dir, bad, needle):
    r = runner.invoke(app, ["iterate", "--model", str(tmp_path / "nope"), "--numbers", "3", "--data", str(data_dir),
                            "--out", str(tmp_path / "it"), "--db", str(tmp_path / "r.db"), "-q", *bad])
    one_error_line(r, needle)
    assert not list(tmp_path.iterdir())


def test_resume_without_the_options_keeps_the_checkpoints_settings(tmp_path, data_dir):
    """An option left at its default on --resume is not a change (only one given is): a run
    made with --seed 3 --lr 0.01 resumes with neither given."""
    out = tmp_path / "S"
    assert runner.invoke(app, train_args(out, data_dir, "--seed", "3", "--lr", "0.01")).exit_code == 0
    r = runner.invoke(app, train_args(out, data_dir, "--resume", "--tokens", "2500"))
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "training.json").read_text())["config"]
    assert cfg["seed"] == 3 and cfg["lr"] == 0.01


def test_recipe_paper_is_the_papers_data_and_refuses_what_would_change_it(tmp_path, data_dir):
    out = tmp_path / "P"
    r = runner.invoke(app, train_args(out, data_dir, "--recipe", "paper"))
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "training.json").read_text())["config"]
    assert cfg["preset"] == "paper" and cfg["goal_forcing"] == 0.0 and cfg["honest_last"] == 0.0
    assert cfg["back_ratio"] == 1.0 and list(cfg["kind_weights"]) == [1.0, 2.0, 2.0] and cfg["ema"] == 0.0
    for extra, needle in ((["--goal-forcing", "0.5"], "--goal-forcing"), (["--kinds", "1:1:1"], "--kinds"),
                          (["--back-ratio", "2"], "--back-ratio"), (["--ema", "0.99"], "--ema"),
                          (["--extra-puzzles", str(data_dir / "val.jsonl")], "--extra-puzzles")):
        one_error_line(runner.invoke(app, train_args(tmp_path / "Q", data_dir, "--recipe", "paper", *extra)), needle)
    one_error_line(runner.invoke(app, train_args(out, data_dir, "--resume", "--recipe", "sbt")), "--recipe")
