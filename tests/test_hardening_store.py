"""Hardening of the results store, reports, GGUF export and model loading (issue 20).

Every test here failed before its fix: strict JSON in reports, stored strings shown as
text (never Rich markup), reports that open the database read-only and never turn a
foreign file into a database, report files written atomically into new folders, one-line
errors for corrupt weights and configs that do not match them (checked before a model is
built), a locked and non-clobbering ``sbt export gguf``, and a llama.cpp context that a
GGUF's claimed context length cannot blow up. (Cut text ending in "…": test_countdown_parse.)
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness import store as store_mod
from harness.store import StoreError, open_store
from sbt_cli.app import app

RUN = {"method": "greedy", "params": {"temperature": 0.0}, "model": "m", "model_sha256": "ab" * 32,
       "backend": "torch", "puzzles_sha256": "p" * 64, "seed": 0, "split": "test_new", "n_puzzles": 2}


def sbt(*args):
    r = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})
    return r.exit_code, r.stdout, r.stderr


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def make_db(path: Path, **run) -> Path:
    with open_store(path) as s:
        row, _ = s.get_or_create_run({**RUN, **run})
        for j in range(2):
            s.add_result(row["id"], {"puzzle_index": j, "numbers": [1, 2, 3, 4], "target": 10, "solved": j == 0,
                                     "failure": None if j == 0 else "no_answer", "steps": [], "tokens": 5,
                                     "wall_ms": 10.0, "backtracks": 0, "model_calls": 1})
        s.set_status(row["id"], "done")
    return path


def snapshot(folder: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


# --------------------------------------------------------------------------- 1. strict JSON


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_report_json_is_strict_after_a_non_finite_stored_value(tmp_path, bad):
    db = make_db(tmp_path / "r.db", params={"temperature": bad, "n": 8})
    with sqlite3.connect(db) as c:  # a hand-edited cost column too
        c.execute("update results set tokens = ?", [math.inf])
    code, out, err = sbt("bench", "report", "--db", db, "--format", "json")
    assert code == 0, err
    assert "Infinity" not in out and "NaN" not in out
    data = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    row = data["leaderboard"][0]
    assert row["params"]["temperature"] is None and row["tokens_per_puzzle"] is None
    code, out, err = sbt("bench", "report", "--db", db, "--format", "csv")
    assert code == 0 and "Infinity" not in out and "NaN" not in out


# --------------------------------------------------------------------------- 2. markup


MARKUP = ["[/]", "[bold]x", "[red]oops[/red]", "[link=file:///etc/passwd]x[/link]"]


@pytest.mark.parametrize("text", MARKUP)
def test_stored_strings_are_shown_as_text_not_markup(tmp_path, text):
    db = make_db(tmp_path / "r.db", model=f"m{text}", method=f"greedy{text}", split=f"s{text}")
    with sqlite3.connect(db) as c:
        c.execute("update results set failure = ? where failure is not null", [f"f{text}"])
        c.execute("insert into iterations (experiment, round, model, status) values (?, 0, ?, ?)",
                  [f"e{text}", f"m{text}", f"st{text}"])
    for args in (["bench", "report", "--no-paper"], ["bench", "runs"]):
        code, out, err = sbt(*args, "--db", db)
        assert code == 0, err
        assert f"m{text}" in out, out
    code, out, err = sbt("bench", "report", "--db", db, "--out", tmp_path / "t.txt")
    assert code == 0 and f"greedy{text}" in (tmp_path / "t.txt").read_text()


def test_tui_replay_list_escapes_stored_strings(tmp_path):
    from rich.text import Text

    from tui.sources import stored_results

    db = make_db(tmp_path / "r.db", method="greedy[/]")
    with sqlite3.connect(db) as c:
        c.execute("update results set trace = '[]', failure = '[bold]f'")
    rows = stored_results(db)
    assert rows
    for r in rows:  # the replay picker's DataTable reads str cells as markup
        assert Text.from_markup(r["run_method"]).plain == "greedy[/]"
        assert Text.from_markup(r["failure"]).plain == "[bold]f"


def test_tui_trace_file_label_is_escaped(tmp_path):
    from rich.text import Text

    from tui.sources import load_trace_file

    f = tmp_path / "[bold]t[red].json"
    f.write_text(json.dumps({"numbers": [2, 3], "target": 5, "method": "greedy", "trace": []}))
    assert Text.from_markup(load_trace_file(f).label).plain == f.name


# --------------------------------------------------------------------------- 3. read-only, not sbt


@pytest.mark.parametrize("content", [b"", b"not sqlite at all\n" * 40, "OTHER"], ids=["empty", "text", "other-sqlite"])
def test_report_refuses_a_file_that_is_not_an_sbt_database_and_leaves_it(tmp_path, content):
    db = tmp_path / "x.db"
    if content == "OTHER":
        with sqlite3.connect(db) as c:
            c.execute("create table dogs (name text)")
        c.close()
    else:
        db.write_bytes(content)
    before = snapshot(tmp_path)
    for args in (["bench", "report"], ["bench", "runs"]):
        code, out, err = sbt(*args, "--db", db)
        assert code == 2, (code, out, err)
        assert re.search("not (an|a usable) sbt results database", one_line_error(err)) and str(db) in err
    assert snapshot(tmp_path) == before


def test_report_opens_the_database_read_only(tmp_path, monkeypatch):
    db = make_db(tmp_path / "r.db")
    with sqlite3.connect(db) as c:  # a rollback-journal file: a read-write open turns it to WAL
        c.execute("pragma journal_mode=delete")
    c.close()
    before = snapshot(tmp_path)
    uris = []
    real = sqlite3.connect

    def spy(target, *a, **kw):
        uris.append(str(target))
        return real(target, *a, **kw)

    monkeypatch.setattr(sqlite3, "connect", spy)
    os.chmod(db, 0o444)
    os.chmod(tmp_path, 0o555)
    try:
        for args in (["bench", "report", "--format", "json"], ["bench", "runs"]):
            code, out, err = sbt(*args, "--db", db)
            assert code == 0, err
        assert snapshot(tmp_path) == before  # same bytes, same mtime, no -wal/-shm/-journal
        assert uris and all("mode=ro" in u for u in uris), uris
    finally:
        os.chmod(tmp_path, 0o755)
        os.chmod(db, 0o644)


def test_report_of_a_wal_database_creates_no_files(tmp_path):
    db = make_db(tmp_path / "r.db")  # closed cleanly: WAL mode, no -wal / -shm beside it
    before = snapshot(tmp_path)
    code, out, err = sbt("bench", "report", "--db", db, "--format", "json")
    assert code == 0 and json.loads(out)["leaderboard"], err
    assert snapshot(tmp_path) == before


def test_report_sees_results_of_a_bench_still_writing(tmp_path):
    db = make_db(tmp_path / "r.db")
    writer = open_store(db)  # an open writer: its -wal holds uncheckpointed rows
    try:
        row, _ = writer.get_or_create_run({**RUN, "seed": 1})
        writer.add_result(row["id"], {"puzzle_index": 0, "numbers": [1, 2, 3, 4], "target": 10, "solved": 1})
        with store_mod.open_store_readonly(db) as s:
            assert len(s.runs()) == 2
    finally:
        writer.close()


def test_writers_still_migrate(tmp_path):
    db = tmp_path / "new.db"
    with open_store(db) as s:
        assert s.schema_version
    with store_mod.open_store_readonly(db) as s:
        assert s.schema_version == [name for name, _ in store_mod.MIGRATIONS]
        with pytest.raises(StoreError):
            store_mod.open_store_readonly(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


# --------------------------------------------------------------------------- 4. --out


@pytest.mark.parametrize("name", ["x.txt", "x.json", "x.csv", "x.md"])
def test_report_out_creates_its_folder_for_every_format(tmp_path, name):
    db = make_db(tmp_path / "r.db")
    out = tmp_path / "new" / "deeper" / name
    code, _, err = sbt("bench", "report", "--db", db, "--out", out)
    assert code == 0, err
    assert out.is_file() and "greedy" in out.read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == [name]  # no temporary file left


def test_report_out_is_atomic_and_errors_name_the_users_path(tmp_path, monkeypatch):
    db = make_db(tmp_path / "r.db")
    out = tmp_path / "keep.txt"
    out.write_text("old report\n")
    import harness.report as report

    def boom(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report.os, "replace", boom)
    code, _, err = sbt("bench", "report", "--db", db, "--out", out)
    assert code == 2 and str(out) in one_line_error(err) and "No space" in err
    assert out.read_text() == "old report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "r.db"]
    monkeypatch.undo()
    blocker = tmp_path / "file"
    blocker.write_text("")
    for target in (blocker / "x.json", blocker / "x.txt", tmp_path):
        args = ["--format", "json"] if target == tmp_path else []
        code, _, err = sbt("bench", "report", "--db", db, "--out", target, *args)
        assert code == 2 and str(target) in one_line_error(err), err


def test_report_out_never_overwrites_the_database(tmp_path):
    db = make_db(tmp_path / "r.db")
    before = db.read_bytes()
    code, _, err = sbt("bench", "report", "--db", db, "--out", db, "--format", "json")
    assert code == 2 and "database" in one_line_error(err)
    assert db.read_bytes() == before


# --------------------------------------------------------------------------- models: config vs weights


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from sbt_core.tokenizer import build_tokenizer
    from training.model import new_model, save_model

    tok = build_tokenizer()
    return save_model(new_model(tok, "tiny", seed=1), tok, tmp_path_factory.mktemp("m") / "tiny-model")


def copy_model(src: Path, dst: Path, config: dict | None = None, weights: bytes | None = None) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    if config is not None:
        cfg = json.loads((src / "config.json").read_text())
        cfg.update(config)
        (dst / "config.json").write_text(json.dumps(cfg))
    if weights is not None:
        (dst / "model.safetensors").write_bytes(weights)
    return dst


def load_error(path: Path, monkeypatch, impl: str) -> str:
    from sbt_core.backends import load_backend
    from sbt_core.errors import SbtError

    monkeypatch.setenv("SBT_TORCH_IMPL", impl)
    with pytest.raises(SbtError) as err:
        load_backend(str(path))
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


@pytest.fixture
def no_model_built(monkeypatch):
    """Building a model (compact or transformers) fails loudly: checks must come first."""
    import transformers

    from sbt_core.backends import compact_llama

    def built(*a, **kw):
        raise AssertionError("a model was built before the check")

    monkeypatch.setattr(compact_llama.CompactLlama, "__init__", built)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", built)


@pytest.mark.parametrize("impl", ["compact", "transformers"])
def test_shape_mismatch_names_the_tensor_and_both_shapes(tiny_dir, tmp_path, monkeypatch, impl, no_model_built):
    d = copy_model(tiny_dir, tmp_path / "m", config={"intermediate_size": 96})
    msg = load_error(d, monkeypatch, impl)
    assert "model.layers.0.mlp.gate_proj.weight" in msg and "(64, 32)" in msg and "(96, 32)" in msg, msg
    assert "config.json" in msg and "built" not in msg


@pytest.mark.parametrize("impl", ["compact", "transformers"])
@pytest.mark.parametrize("config", [{"hidden_size": 100_000, "num_hidden_layers": 1000}, {"hidden_size": 100_000},
                                    {"num_hidden_layers": 1000}, {"num_hidden_layers": 1}, {"vocab_size": 10**6},
                                    {"tie_word_embeddings": False}])
def test_huge_or_wrong_config_refused_before_any_model_is_built(tiny_dir, tmp_path, monkeypatch, impl, config,
                                                                no_model_built):
    d = copy_model(tiny_dir, tmp_path / "m", config=config)
    msg = load_error(d, monkeypatch, impl)
    assert "config.json" in msg and "does not match" in msg and "built" not in msg, msg


@pytest.mark.parametrize("weights", [b"", b"\x05\x00garbage", os.urandom(300), "TRUNCATED"],
                         ids=["empty", "short", "random", "truncated"])
@pytest.mark.parametrize("impl", ["compact", "transformers"])
def test_corrupt_weights_name_the_file(tiny_dir, tmp_path, monkeypatch, impl, weights, no_model_built):
    if weights == "TRUNCATED":
        weights = (tiny_dir / "model.safetensors").read_bytes()[:-100]
    d = copy_model(tiny_dir, tmp_path / "m", weights=weights)
    msg = load_error(d, monkeypatch, impl)
    assert str(d / "model.safetensors") in msg and "safetensors" in msg, msg


@pytest.mark.parametrize("key,value", [("hidden_size", -32), ("hidden_size", "32"), ("num_hidden_layers", 1.5),
                                       ("num_attention_heads", 0), ("rms_norm_eps", float("nan")),
                                       ("rms_norm_eps", -1.0), ("intermediate_size", True), ("vocab_size", None),
                                       ("vocab_size", 10**9), ("num_hidden_layers", 10**6), ("num_key_value_heads", 3),
                                       ("head_dim", 7),
                                       ("rope_parameters", {"rope_theta": float("inf"), "rope_type": "default"})])
def test_absurd_config_values_are_one_line(tiny_dir, tmp_path, monkeypatch, key, value, no_model_built):
    d = copy_model(tiny_dir, tmp_path / "m", config={key: value})
    for impl in ("compact", "transformers"):
        msg = load_error(d, monkeypatch, impl)
        assert key in msg and "config.json" in msg and "built" not in msg, msg


def test_config_that_is_not_an_object_is_one_line(tiny_dir, tmp_path, monkeypatch):
    d = copy_model(tiny_dir, tmp_path / "m")
    (d / "config.json").write_text("[1, 2]")
    assert "config.json" in load_error(d, monkeypatch, "auto")


def test_matching_model_still_loads(tiny_dir, monkeypatch):
    from sbt_core.backends import load_backend

    for impl in ("compact", "transformers"):
        monkeypatch.setenv("SBT_TORCH_IMPL", impl)
        assert load_backend(str(tiny_dir)).model_name == "tiny-model"


# --------------------------------------------------------------------------- sbt export gguf

gguf_needed = pytest.mark.skipif(__import__("importlib").util.find_spec("gguf") is None, reason="needs gguf")


@gguf_needed
@pytest.mark.parametrize("weights", [os.urandom(300), b"", "TRUNCATED"], ids=["random", "empty", "truncated"])
def test_export_of_corrupt_weights_names_the_file(tiny_dir, tmp_path, weights):
    if weights == "TRUNCATED":
        weights = (tiny_dir / "model.safetensors").read_bytes()[:-100]
    d = copy_model(tiny_dir, tmp_path / "m", weights=weights)
    code, _, err = sbt("export", "gguf", d, "--quant", "f32")
    assert code == 2 and str(d / "model.safetensors") in one_line_error(err), err
    assert not list(d.glob("*.gguf"))


@gguf_needed
def test_export_of_mismatched_config_is_one_line(tiny_dir, tmp_path):
    d = copy_model(tiny_dir, tmp_path / "m", config={"hidden_size": 100_000, "num_hidden_layers": 1000})
    code, _, err = sbt("export", "gguf", d, "--quant", "f32")
    assert code == 2 and "does not match" in one_line_error(err)
    d = copy_model(tiny_dir, tmp_path / "m2", config={"intermediate_size": 96})
    code, _, err = sbt("export", "gguf", d, "--quant", "f32")
    assert code == 2 and "(64, 32)" in one_line_error(err) and "(96, 32)" in err


@gguf_needed
def test_export_to_an_unwritable_path_names_the_users_path(tiny_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = blocker / "x.gguf"
    code, _, err = sbt("export", "gguf", tiny_dir, "--quant", "f32", "--out", out)
    assert code == 2 and str(out) in one_line_error(err) and ".gguf-" not in err, err
    import sbt_core.gguf_export as ge

    def denied(*a, **kw):
        raise PermissionError(13, "Permission denied", str(a[0]))

    monkeypatch.setattr(ge.os, "replace", denied)
    out = tmp_path / "ro" / "x.gguf"
    out.parent.mkdir()
    code, _, err = sbt("export", "gguf", tiny_dir, "--quant", "f32", "--out", out)
    line = one_line_error(err)
    assert code == 2 and str(out) in line and "Permission denied" in line and ".x-" not in line, line
    assert sorted(p.name for p in out.parent.iterdir()) == []  # no temporary file, no lock file left


@gguf_needed
def test_export_refuses_to_replace_an_existing_gguf_unless_overwrite(tiny_dir, tmp_path):
    d = copy_model(tiny_dir, tmp_path / "m")
    mine = d / "model-f32.gguf"
    mine.write_bytes(b"my own GGUF")
    code, _, err = sbt("export", "gguf", d, "--quant", "f32")
    assert code == 2 and str(mine) in one_line_error(err) and "--overwrite" in err
    assert mine.read_bytes() == b"my own GGUF"
    code, out, err = sbt("export", "gguf", d, "--quant", "f32", "--overwrite")
    assert code == 0 and mine.read_bytes()[:4] == b"GGUF", err
    other = tmp_path / "elsewhere.gguf"
    other.write_bytes(b"keep")
    code, _, err = sbt("export", "gguf", d, "--quant", "f32", "--out", other)
    assert code == 2 and other.read_bytes() == b"keep"


@gguf_needed
def test_export_holds_the_output_lock(tiny_dir, tmp_path):
    from sbt_core.locks import output_lock

    out = tmp_path / "x.gguf"
    with output_lock(out, is_dir=False, what="--out"):
        code, _, err = sbt("export", "gguf", tiny_dir, "--quant", "f32", "--out", out)
    assert code == 2 and "in use" in one_line_error(err) and str(out) in err
    assert not out.exists()
    code, _, err = sbt("export", "gguf", tiny_dir, "--quant", "f32", "--out", out)
    assert code == 0 and out.is_file() and not (tmp_path / "x.gguf.lock").exists(), err


@gguf_needed
@pytest.mark.skipif(__import__("importlib").util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python")
def test_gguf_claiming_a_huge_context_allocates_no_huge_kv_cache(tiny_dir, tmp_path, monkeypatch):
    from sbt_core.backends import llama_backend
    from sbt_core.gguf_export import export_gguf
    from sbt_core.limits import LLAMA_MAX_CONTEXT

    d = copy_model(tiny_dir, tmp_path / "m", config={"max_position_embeddings": 2**22})
    export_gguf(d, "f32")
    ll = llama_backend.import_llama_cpp()
    asked = []

    def no_context(model, cparams):  # record the size asked for, allocate nothing
        asked.append(cparams.n_ctx)
        return None

    monkeypatch.setattr(ll, "llama_init_from_model", no_context)
    with pytest.raises(Exception):
        llama_backend.LlamaBackend(d, seqs=2, slots=2)
    assert asked and asked[0] <= 4 * LLAMA_MAX_CONTEXT, asked


@gguf_needed
@pytest.mark.parametrize("threads", ["0", "-1", "5000"])
def test_export_threads_out_of_range_refused_before_reading(tiny_dir, tmp_path, threads):
    out = tmp_path / "x.gguf"
    code, _, err = sbt("export", "gguf", tiny_dir, "--quant", "f32", "--out", out, "--threads", threads)
    assert code == 2 and "--threads" in one_line_error(err) and not out.exists()
