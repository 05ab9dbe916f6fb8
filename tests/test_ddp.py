"""Data-parallel ``sbt train`` under torchrun (issue 22): two CPU processes (gloo) train the
run one process makes at the same global batch, rank 0 writes everything once, the
checkpoint resumes with another number of processes, and impossible settings are one line.

The runs are tiny (a 60-puzzle Countdown-3 set, batch 8, about 10 steps); the one-process
runs go through the CLI in this process, the data-parallel one through
``python -m torch.distributed.run`` (the ``sbt`` entry point).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from _train_fixtures import quick_countdown3
from typer.testing import CliRunner

from sbt_cli.app import app
from _cli import one_error_line

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()
needs_torchrun = pytest.mark.skipif(shutil.which("sbt") is None, reason="needs the sbt entry point (pip install -e .)")
FIRST, MORE = "2500", "4500"  # --tokens of the first run and of its resume


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return quick_countdown3(tmp_path_factory, "ddp", 60)


def train_args(out, data_dir, *extra, tokens=FIRST):
    # --lr 1 so that the (warm-up) steps move the weights visibly: a rank on the wrong slice shows
    return ["train", "--out", str(out), "--numbers", "3", "--data-dir", str(data_dir), "--size", "tiny",
            "--tokens", tokens, "--batch-size", "8", "--lr", "1", "--eval-every", "3", "--eval-puzzles", "4",
            "--ckpt-every", "4", "--threads", "1", "--precision", "fp32", "--compile", "off", "--quiet", *extra]


def torchrun(*args: str, nproc: int = 2, **kw) -> subprocess.Popen | subprocess.CompletedProcess:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SBT_DEVICE"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "--no-python", "--", "sbt", *args]
    if kw.get("background"):
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False)


def weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def assert_same_run(a: Path, b: Path, rtol: float = 1e-4) -> None:
    """Two runs' training.json curves (loss, val accuracy, steps, tokens) and final weights agree."""
    import torch

    ja, jb = (json.loads((x / "training.json").read_text()) for x in (a, b))
    assert (ja["steps"], ja["tokens"]) == (jb["steps"], jb["tokens"])
    assert len(ja["curve"]) == len(jb["curve"]) >= 3
    for pa, pb in zip(ja["curve"], jb["curve"]):
        assert (pa["step"], pa["tokens"], pa["val_greedy"]) == (pb["step"], pb["tokens"], pb["val_greedy"])
        assert pa["loss"] == pytest.approx(pb["loss"], rel=rtol, abs=2e-4)  # (the curve rounds to 4 places)
    # the weights: Adam divides by the gradients' running RMS, which makes float rounding in the
    # gradients of (nearly) untrained rows visible in the weights; at lr < 0.1 it stays within
    # 1e-3 here, while a rank that trains on the wrong slice moves them by about lr per step
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=0, atol=1e-3), (k, float((wa[k] - wb[k]).abs().max()))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """One process and two (torchrun) on the same settings."""
    root = tmp_path_factory.mktemp("ddp-runs")
    r = runner.invoke(app, train_args(root / "one", data_dir))
    assert r.exit_code == 0, r.output
    two = torchrun(*train_args(root / "two", data_dir))
    assert two.returncode == 0, two.stderr[-3000:]
    return root, two


@needs_torchrun
def test_two_processes_train_the_run_of_one_at_the_same_global_batch(runs):
    root, _ = runs
    assert_same_run(root / "one", root / "two")
    one_json, two_json = (json.loads((root / x / "training.json").read_text()) for x in ("one", "two"))
    assert (one_json["world_size"], two_json["world_size"]) == (1, 2)
    assert one_json["device"] == two_json["device"] == "cpu"
    # the loss curve moved (the test would not see a rank training the wrong slice otherwise)
    losses = [p["loss"] for p in two_json["curve"]]
    assert losses[0] - losses[-1] > 0.05


@needs_torchrun
def test_rank_0_alone_logs_and_writes(runs):
    root, two = runs
    out = two.stdout
    assert out.count("saved ") == 1 and out.count("building examples") == 1 and out.count("precision fp32") == 1
    assert "data-parallel: 2 processes on cpu" in out
    assert "Traceback" not in two.stderr
    ckpt = root / "two" / "checkpoint"
    names = sorted(p.name for p in ckpt.iterdir())
    assert len([n for n in names if n.startswith("dataset-")]) == 2  # one cache (.json + .safetensors)
    assert len([n for n in names if n.startswith("state-")]) == 1 and "state.json" in names
    assert not [p for p in (root / "two").rglob("*.tmp*")]
    # rank 0's files are those of the one-process run, no more
    def listing(d):
        return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())

    assert listing(root / "two") == listing(root / "one")


@needs_torchrun
def test_a_two_process_checkpoint_resumes_with_one_process_on_the_same_curve(runs, data_dir):
    root, _ = runs
    first = json.loads((root / "two" / "training.json").read_text())["steps"]
    for name in ("one", "two"):  # both continue with one process and more tokens
        r = runner.invoke(app, train_args(root / name, data_dir, "--resume", tokens=MORE))
        assert r.exit_code == 0, r.output
        assert f"resumed at step {first}" in r.output
    assert_same_run(root / "one", root / "two")
    resumed = json.loads((root / "two" / "training.json").read_text())
    assert resumed["world_size"] == 1 and resumed["steps"] >= first + 5


def test_the_single_process_path_is_the_one_it_was(tmp_path, data_dir):
    """No torchrun: no process group, the model's own loss (DDP's path is not taken)."""
    import torch.distributed as dist

    from training import distributed
    from training.sft import TrainConfig, train

    assert distributed.world() is None
    cfg = TrainConfig(out=str(tmp_path / "m"), data_dir=str(data_dir), size="tiny", max_tokens=600, batch_size=4,
                      eval_every=1000, eval_puzzles=2, threads=1, precision="fp32", compile="off")
    report = train(cfg, log=lambda m: None, device="cpu")
    assert report["world_size"] == 1 and report["device"] == "cpu" and not dist.is_initialized()


def test_trained_counts_are_the_tokens_the_models_own_loss_averages_over(data_dir):
    """What each rank divides by: per example, the labels after the first that are not -100
    (a causal LM's loss is taken on the shifted labels)."""
    from sbt_core.generate import read_puzzles
    from sbt_core.tokenizer import build_tokenizer
    from training.batches import EncodedDataset, collate, trained_counts
    from training.data import Recipe, build_examples, encode

    tok = build_tokenizer()
    puzzles = read_puzzles(data_dir / "train.jsonl", 12)
    data = EncodedDataset([encode(ex, tok) for ex in build_examples(puzzles, Recipe(), 0)])
    counts = trained_counts(data)
    batch = list(range(len(data)))
    labels = collate(data, batch, tok.pad_token_id)["labels"]
    assert counts.tolist() == (labels[:, 1:] != -100).sum(1).tolist()
    assert all(c > 0 for c in counts.tolist())


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("world,extra,needles", [
    ("2", ["--batch-size", "7"], ["--batch-size 7", "2 processes", "multiple of 2"]),
    ("3", [], ["--batch-size 8", "3 processes"]),
    ("2", ["--device", "cuda:1"], ["--device cuda:1", "LOCAL_RANK"]),
    ("2", ["--device", "mps"], ["--device mps", "data-parallel"]),
])
def test_impossible_torchrun_settings_are_one_line_before_anything_starts(tmp_path, data_dir, monkeypatch, world,
                                                                          extra, needles):
    """As each rank of such a torchrun job sees it (RANK / WORLD_SIZE set): refused before any
    process group, model or file."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("LOCAL_RANK", "0")
    out = tmp_path / "m"
    one_error_line(runner.invoke(app, train_args(out, data_dir, *extra)), *needles)
    assert not out.exists()


def test_resume_with_a_world_size_that_does_not_split_the_checkpoints_batch_is_refused(runs, data_dir,
                                                                                        monkeypatch):
    root, _ = runs
    before = (root / "one" / "checkpoint" / "state.json").read_bytes()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    one_error_line(runner.invoke(app, train_args(root / "one", data_dir, "--resume", tokens=MORE)),
                   "--batch-size 8", "3 processes")
    assert (root / "one" / "checkpoint" / "state.json").read_bytes() == before


@pytest.mark.parametrize("device,needle", [("cuda", "no CUDA device"), ("cuda:0", "no CUDA device"),
                                           ("tpu", "choose cpu, cuda")])
def test_a_device_that_is_not_here_is_one_line_and_nothing_is_written(tmp_path, data_dir, device, needle):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "m"
    one_error_line(runner.invoke(app, train_args(out, data_dir, "--device", device)), needle)
    assert not out.exists()


def test_each_rank_takes_the_gpu_of_its_local_rank(monkeypatch):
    """The device choice on a (pretended) machine of 2 GPUs: no GPU is needed to check it."""
    import torch

    from sbt_core.errors import SbtError
    from training.distributed import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda") == resolve_device(None)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("auto", local_rank=0) == torch.device("cuda", 0)
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")
    with pytest.raises(SbtError, match="LOCAL_RANK 2 has none"):
        resolve_device("cuda", local_rank=2)
    with pytest.raises(SbtError, match="cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_a_bad_sbt_device_variable_is_named(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("SBT_DEVICE", "gpu")
    one_error_line(runner.invoke(app, train_args(tmp_path / "m", data_dir)), "SBT_DEVICE")


# --------------------------------------------------------------------------- interrupts


@needs_torchrun
def test_sigterm_stops_every_rank_without_a_traceback_and_the_checkpoint_resumes(tmp_path, data_dir):
    """torchrun stopped (SIGTERM: it sends it on to every rank): no rank prints a traceback
    (torchrun's own report of the signal is its business), and the checkpoint left behind is
    whole: one process resumes it."""
    out = tmp_path / "m"
    proc = torchrun(*train_args(out, data_dir, "--ckpt-every", "2", tokens="400000"), background=True)
    state = out / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while not state.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert state.is_file(), proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    ours = [x for x in err.splitlines() if "sbt_cli" in x or "/training/" in x or "sbt_core" in x]
    assert not ours, err[-3000:]
    assert err.count("Traceback") <= 1  # (torchrun's, of its own SignalException)
    step = json.loads(state.read_text())["train_state"]["step"]
    r = runner.invoke(app, train_args(out, data_dir, "--resume", tokens="3000"))
    assert r.exit_code == 0, r.output
    assert f"resumed at step {step:,}" in r.output
