"""Backend options (issue 21): parsed once (flags, else SBT_* variables, else defaults) by
``sbt_core.settings``, the one module that reads the environment, and part of a run's
identity in results.db, so that a bfloat16 bench never resumes into a float32 run."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from harness.runner import Bench, command_line, plan_matrix  # noqa: E402
from harness.store import REPO_ROOT, canonical_json, open_store, open_store_readonly, run_key  # noqa: E402
from sbt_core.errors import SbtError  # noqa: E402
from sbt_core.settings import BackendOptions, backend_options, format_options  # noqa: E402

VARIABLES = ("SBT_DTYPE", "SBT_DEVICE", "SBT_TORCH_IMPL", "SBT_NUM_THREADS", "OMP_NUM_THREADS", "SBT_LLAMA_QUANT",
             "SBT_LLAMA_SEQS", "SBT_LLAMA_SLOTS", "SBT_LLAMA_KV_UNIFIED", "SBT_LLAMA_FLASH_ATTN")


@pytest.fixture
def clean_env(monkeypatch):
    for k in VARIABLES:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


# --------------------------------------------------------------------------- parsing


def test_flags_win_over_variables_and_variables_over_defaults(clean_env):
    assert BackendOptions.from_env() == BackendOptions()
    clean_env.setenv("SBT_DTYPE", "bf16")
    clean_env.setenv("SBT_LLAMA_SEQS", "8")
    clean_env.setenv("SBT_LLAMA_FLASH_ATTN", "0")
    got = BackendOptions.from_env()
    assert (got.dtype, got.seqs, got.flash_attn) == ("bfloat16", 8, False)
    assert BackendOptions.from_env(dtype="float32").dtype == "float32"
    clean_env.setenv("SBT_DTYPE", "")  # empty counts as unset
    assert BackendOptions.from_env().dtype == "float32"


def test_threads_fall_back_to_openmp_and_zero_means_default(clean_env):
    assert BackendOptions.from_env().threads is None
    clean_env.setenv("OMP_NUM_THREADS", "4")
    assert BackendOptions.from_env().threads == 4
    clean_env.setenv("SBT_NUM_THREADS", "2")
    assert BackendOptions.from_env().threads == 2
    assert BackendOptions.from_env(threads=3).threads == 3
    assert BackendOptions.from_env(threads=0).threads == 4  # 0: the default, which is OMP_NUM_THREADS here
    clean_env.setenv("OMP_NUM_THREADS", "4,2")  # OpenMP's nested form is OpenMP's business, not an error
    clean_env.delenv("SBT_NUM_THREADS")
    assert BackendOptions.from_env().threads is None


@pytest.mark.parametrize("where,value,named", [
    ("SBT_DTYPE", "half", "SBT_DTYPE"), ("SBT_DEVICE", "gpu", "SBT_DEVICE"),
    ("SBT_TORCH_IMPL", "onnx", "SBT_TORCH_IMPL"), ("SBT_NUM_THREADS", "two", "SBT_NUM_THREADS"),
    ("SBT_LLAMA_SEQS", "0", "SBT_LLAMA_SEQS"), ("SBT_LLAMA_SLOTS", "1e3", "SBT_LLAMA_SLOTS"),
    ("SBT_LLAMA_KV_UNIFIED", "maybe", "SBT_LLAMA_KV_UNIFIED"), ("SBT_LLAMA_QUANT", "../x", "SBT_LLAMA_QUANT"),
])
def test_a_bad_variable_is_one_line_naming_it(clean_env, where, value, named):
    clean_env.setenv(where, value)
    with pytest.raises(SbtError) as err:
        BackendOptions.from_env()
    assert named in str(err.value) and "\n" not in str(err.value)


def test_bad_values_and_misplaced_flags_are_refused(clean_env):
    with pytest.raises(SbtError, match="--dtype"):
        backend_options("torch", dtype="float16")
    with pytest.raises(SbtError, match="--threads"):
        backend_options("torch", threads=-1)
    with pytest.raises(SbtError, match="at most 256"):
        BackendOptions(seqs=200, slots=100)
    with pytest.raises(SbtError, match="--dtype is an option of the torch backend"):
        backend_options("llama", dtype="bfloat16")
    with pytest.raises(SbtError, match="--quant is an option of the llama backend"):
        backend_options("torch", quant="q8_0")
    assert backend_options("torch") is None  # no flag: the backend reads the same options when it opens
    assert backend_options("torch", dtype="bf16", quant=None) == BackendOptions(dtype="bfloat16")
    clean_env.setenv("SBT_DTYPE", "bfloat16")  # a variable meant for torch does not stop a llama run
    assert backend_options("llama", quant="f16") == BackendOptions(dtype="bfloat16", quant="f16")
    clean_env.setenv("SBT_DTYPE", "half")  # but a bad one is refused at the edge, flags or not
    with pytest.raises(SbtError, match="SBT_DTYPE"):
        backend_options("torch")


def test_identity_keeps_what_changes_the_computation_and_drops_defaults():
    assert BackendOptions().identity("torch") == {} and BackendOptions().identity("llama") == {}
    assert BackendOptions(dtype="fp32", device="cpu", torch_impl="auto").identity() == {}
    bf = BackendOptions(dtype="bf16", threads=8, quant="q4_0", seqs=8, flash_attn=True)
    assert bf.identity("torch") == {"dtype": "bfloat16"}  # threads: speed only; quant: the GGUF's sha256
    assert bf.identity("llama") == {"seqs": 8, "flash_attn": True}
    assert bf.identity("scripted") == {}
    assert format_options(bf.identity()) == "dtype=bfloat16 flash_attn=1 seqs=8"
    assert format_options({}) == ""


# --------------------------------------------------------------------------- the CLI edge


def test_cli_flags_are_one_line_errors(clean_env):
    from sbt_cli.app import app

    runner = CliRunner()
    for args in (["solve", "2 3 5 -> 30", "--dtype", "half"], ["bench", "--device", "gpu", "--methods", "exact"],
                 ["harvest", "--out", "x.jsonl", "--quant", "q8_0"], ["iterate", "--dtype", "float16"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, r.output)
    clean_env.setenv("SBT_DTYPE", "half")
    r = runner.invoke(app, ["solve", "2 3 5 -> 30", "--method", "exact"])
    assert r.exit_code == 2 and "SBT_DTYPE" in r.output


def test_only_the_settings_module_reads_the_environment():
    pattern = re.compile(r"os\.environ|getenv")
    found = []
    for package in ("sbt_core", "training", "harness", "sbt_cli", "tui"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            if path.relative_to(REPO_ROOT).as_posix() == "sbt_core/settings.py":
                continue
            found += [f"{path.relative_to(REPO_ROOT)}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1)
                      if pattern.search(line)]
    assert found == []


def test_command_line_records_every_variable_that_changes_a_run(clean_env, monkeypatch):
    import sys

    monkeypatch.setattr(sys, "argv", ["/usr/bin/sbt", "bench", "--backend", "llama"])
    clean_env.setenv("SBT_LLAMA_SEQS", "8")
    clean_env.setenv("SBT_NUM_THREADS", "2")  # speed only: not recorded
    assert command_line() == "SBT_LLAMA_SEQS=8 sbt bench --backend llama"


# --------------------------------------------------------------------------- run identity


def legacy_key(method, params, model_sha256, backend, puzzles_sha256, seed) -> str:
    """``run_key`` as it was before backend options counted (results.db rows carry it)."""
    ident = {"method": method, "params": params, "model_sha256": model_sha256 or None,
             "backend": backend or None, "puzzles_sha256": puzzles_sha256, "seed": int(seed)}
    return hashlib.sha256(canonical_json(ident).encode()).hexdigest()


def test_default_options_keep_the_key_other_options_change_it():
    args = ("greedy", {"max_new_tokens": 96}, "a" * 64, "torch", "p" * 64, 0)
    assert run_key(*args) == run_key(*args, options={}) == legacy_key(*args)
    assert run_key(*args, options={"dtype": "bfloat16"}) != legacy_key(*args)


def test_rows_of_the_shipped_results_db_keep_their_keys():
    db = REPO_ROOT / "results.db"
    if not db.is_file():
        pytest.skip("no results.db")
    import json

    with open_store_readonly(db) as s:  # an older results.db is still readable without being migrated
        rows = s.query("select * from runs order by id")
    assert rows
    for r in rows:
        got = run_key(r["method"], json.loads(r["params"]), r["model_sha256"], r["backend"], r["puzzles_sha256"],
                      r["seed"], json.loads(r["backend_options"]) if r.get("backend_options") else None)
        assert got == r["key"], r["id"]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    pytest.importorskip("torch")
    from sbt_core.tokenizer import build_tokenizer
    from training.model import new_model, save_model

    tok = build_tokenizer()
    models = tmp_path_factory.mktemp("models")
    save_model(new_model(tok, "tiny", seed=0), tok, models / "tiny-model")
    return models


def test_a_bfloat16_bench_is_not_resumed_into_the_float32_run(tiny_models, tmp_path, clean_env):
    """The bug of issue 21: ``SBT_DTYPE=bfloat16 sbt bench ...`` found the float32 run's row."""
    clean_env.setenv("SBT_MODELS_DIR", str(tiny_models))
    puzzles = tmp_path / "p.jsonl"
    puzzles.write_text('{"numbers": [2, 3, 5], "target": 30}\n{"numbers": [4, 7, 8, 8], "target": 24}\n')
    store = open_store(tmp_path / "r.db")
    specs = plan_matrix(["greedy"], [], [], ["tiny-model"])

    def bench(**kw):
        (out,) = Bench(store, specs, split=None, puzzles_file=puzzles, **kw).run()
        return out

    f32 = bench()
    assert f32.new == 2
    clean_env.setenv("SBT_DTYPE", "bfloat16")
    bf16 = bench()
    assert bf16.run_id != f32.run_id and bf16.new == 2  # a run of its own, computed afresh
    clean_env.delenv("SBT_DTYPE")
    again = bench()
    assert again.run_id == f32.run_id and again.new == 0  # default options: the float32 run resumes
    flag = bench(options=BackendOptions(dtype="bfloat16"))
    assert flag.run_id == bf16.run_id and flag.new == 0  # --dtype and SBT_DTYPE: one computation, one run
    rows = {r["id"]: r for r in store.runs()}
    assert rows[f32.run_id]["backend_options"] is None
    assert rows[bf16.run_id]["backend_options"] == '{"dtype":"bfloat16"}'
    assert rows[bf16.run_id]["model"] == rows[f32.run_id]["model"] == "tiny-model"
    store.close()


def test_bench_runs_lists_the_options_of_a_run(tiny_models, tmp_path, clean_env):
    from sbt_cli.app import app

    clean_env.setenv("SBT_MODELS_DIR", str(tiny_models))
    clean_env.setenv("COLUMNS", "200")
    puzzles = tmp_path / "p.jsonl"
    puzzles.write_text('{"numbers": [2, 3, 5], "target": 30}\n')
    db = str(tmp_path / "r.db")
    runner = CliRunner()
    for extra in ([], ["--dtype", "bf16"]):
        r = runner.invoke(app, ["bench", "--puzzles", str(puzzles), "--methods", "greedy", "--model", "tiny-model",
                                "--db", db, "-q", *extra])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["bench", "runs", "--db", db])
    assert r.exit_code == 0, r.output
    labels = [line for line in r.output.splitlines() if "tiny-model" in line]
    assert len(labels) == 2 and "dtype=bfloat16" not in labels[0] and "greedy dtype=bfloat16" in labels[1]


def test_models_dir_and_db_follow_their_variables(clean_env, tmp_path):
    from harness.store import default_db_path
    from sbt_core.models import MODELS_DIR, models_dir
    from tui.sources import default_db

    clean_env.delenv("SBT_MODELS_DIR", raising=False)
    clean_env.delenv("SBT_DB", raising=False)
    assert models_dir() == MODELS_DIR and default_db() == default_db_path() == REPO_ROOT / "results.db"
    clean_env.setenv("SBT_MODELS_DIR", str(tmp_path))
    clean_env.setenv("SBT_DB", str(tmp_path / "x.db"))
    assert models_dir() == Path(tmp_path) and default_db() == default_db_path() == tmp_path / "x.db"


def test_iterate_opens_its_models_with_the_options_given(tiny_models):
    from sbt_cli.iterate import _with_options

    factory = _with_options(BackendOptions(dtype="bf16"))
    backend = factory(tiny_models / "tiny-model", "start@r0", "search")
    assert backend.model_name == "start@r0" and backend.options.identity("torch") == {"dtype": "bfloat16"}
    assert factory.same_for_all_roles
