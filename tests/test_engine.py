"""The engine (issue 21): one registry of backends, one way to open a model (resolved once,
search defaults read once), one drain of the event stream."""

from __future__ import annotations

import json

import _bench_fakes as fakes
import pytest

from harness.runner import Bench, RunSpec
from sbt_core import backends, engine, models
from sbt_core.backends import BACKENDS, BackendSpec, load_backend
from sbt_core.backends.scripted import ScriptedBackend, solver_continuation
from sbt_core.countdown import Puzzle
from sbt_core.errors import SbtError
from sbt_core.search.params import SearchParams
from sbt_core.search import METHODS, Method, run_search
from sbt_core.search.events import Done

P = Puzzle((3, 4, 5, 7), 41)


@pytest.fixture
def echo(monkeypatch, tmp_path):
    """A backend added the documented way: one registry entry (a resolver and an opener)."""
    opened = []

    def resolve(name):
        path = tmp_path / str(name)
        if not path.is_dir():
            raise SbtError(f"model {name!r} not found")
        return path

    def open_echo(path, options):
        opened.append((path, options))
        return ScriptedBackend(default=solver_continuation, model_name=path.name)

    monkeypatch.setitem(BACKENDS, "echo", BackendSpec("echo", open_echo, resolve))
    (tmp_path / "m").mkdir()
    return tmp_path / "m", opened


def test_the_registry_names_each_backend_once():
    assert list(BACKENDS)[:2] == ["torch", "llama"] and "scripted" in BACKENDS
    assert BACKENDS["torch"].needs_model and BACKENDS["llama"].needs_model and not BACKENDS["scripted"].needs_model
    with pytest.raises(SbtError) as exc:
        load_backend("countdown4-backtrack", "nope")
    assert str(exc.value) == "unknown backend 'nope'; choose one of: torch, llama"  # as before the registry
    assert isinstance(load_backend(None, "scripted", allow_hidden=True), ScriptedBackend)


def test_a_new_backend_is_one_registry_entry(echo):
    path, opened = echo
    be = load_backend("m", "echo")
    assert be.model_name == "m" and opened == [(path, None)]
    with pytest.raises(SbtError, match="not found"):
        load_backend("absent", "echo")


def test_open_model_opens_once_and_reads_the_search_defaults_once(echo, monkeypatch):
    path, opened = echo
    (path / models.SEARCH_DEFAULTS_FILE).write_text(json.dumps({"temperature": 1.3, "chosen_on": "val"}))
    reads = []
    real = models.search_defaults
    monkeypatch.setattr(models, "search_defaults", lambda *a: reads.append(a) or real(*a))
    e = engine.open_model(path, "echo", 4)
    assert e.search_defaults == {"temperature": 1.3}
    assert e.model_name == "m" and len(opened) == 1
    assert e.params("self-backtrack", {"n": 2})["temperature"] == 1.3
    assert e.params("self-backtrack", {"temperature": 0.2})["temperature"] == 0.2  # the user's choice wins
    assert e.params("exact") == {}
    e.backend, e.search_defaults  # noqa: B018
    assert len(reads) == 1 and len(opened) == 1


def test_an_engine_opens_nothing_until_a_search_needs_the_model(echo):
    path, opened = echo
    e = engine.Engine(str(path), "echo", 4)
    with pytest.raises(SbtError, match="n must be at least 1"):  # parameters are checked before any load
        e.params("self-backtrack", {"n": 0}, names=("--{flag}",))
    result, events = engine.solve(e, "exact", P)
    assert result.solved and events is None and opened == []  # the solver needs no model
    result, _ = engine.solve(e, "greedy", P)
    assert result.solved and len(opened) == 1


def test_solve_is_the_one_drain_with_events_on_request():
    backend = ScriptedBackend(default=solver_continuation)
    seen = []
    result, events = engine.solve(backend, "self-backtrack", P, {"n": 2, "b": 1}, 3, keep_events=True,
                                  on_event=seen.append)
    assert isinstance(events[-1], Done) and events[-1].result == result and seen == events
    again = run_search("self-backtrack", P, backend, {"n": 2, "b": 1}, 3)
    assert again.lines == result.lines and again.stats.tokens == result.stats.tokens  # wall time differs
    assert engine.solve(backend, "self-backtrack", P, {"n": 2, "b": 1}, 3)[1] is None


def test_a_stream_without_done_is_an_error_not_a_silent_none(monkeypatch):
    monkeypatch.setitem(METHODS, "mute", Method("mute", lambda *a: iter(()), SearchParams, False, False, "no events"))
    assert engine.drain(iter(())) == (None, None)
    with pytest.raises(RuntimeError, match="without a Done event"):
        engine.solve(None, "mute", P)


def test_bench_preflight_resolves_a_model_as_its_backend_does(tmp_path):
    """`sbt bench --backend llama --model x.gguf` was refused before any run ("is not a
    directory": the torch resolver) although `sbt solve --backend llama` takes it."""
    gguf = tmp_path / "tiny-q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    fakes.make_puzzles(tmp_path / "p.jsonl", 2)
    spec = RunSpec("greedy", (("max_new_tokens", 96),), str(gguf))
    Bench(None, [spec], split=None, puzzles_file=tmp_path / "p.jsonl", backend="llama").preflight()
    with pytest.raises(SbtError, match="not found"):
        Bench(None, [RunSpec("greedy", (), str(tmp_path / "absent.gguf"))], split=None,
              puzzles_file=tmp_path / "p.jsonl", backend="llama").preflight()
    with pytest.raises(SbtError, match="unknown backend 'nope'; choose one of: torch, llama$"):
        Bench(None, [spec], split=None, puzzles_file=tmp_path / "p.jsonl", backend="nope").preflight()


def test_a_test_may_still_replace_load_backend(monkeypatch, tmp_path):
    monkeypatch.setenv("SBT_MODELS_DIR", str(tmp_path))  # no model: the replacement is all that opens
    monkeypatch.setattr(backends, "load_backend", lambda *a, **k: ScriptedBackend(default=solver_continuation))
    e = engine.Engine(None, "torch", 4)
    assert isinstance(e.backend, ScriptedBackend) and engine.solve(e, "greedy", P)[0].solved


def test_the_hidden_scripted_backend_is_refused_to_user_commands(tmp_path):
    """The scripted backend is a perfect model (the exact solver's moves): a bench or solve
    that could pick it would store 100% as if a model had earned it."""
    from typer.testing import CliRunner

    from sbt_cli.app import app

    runner = CliRunner()
    for args in (["solve", "3 5 7 11 -> 24", "--backend", "scripted"],
                 ["bench", "--backend", "scripted", "--methods", "greedy", "--limit", "2", "--split", "val",
                  "--db", str(tmp_path / "x.db"), "--quiet"]):
        res = runner.invoke(app, args)
        lines = res.stderr.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1 and "unknown backend 'scripted'" in lines[0], res.output
    assert not (tmp_path / "x.db").exists() or "scripted" not in (tmp_path / "x.db").read_bytes().decode("latin1")
