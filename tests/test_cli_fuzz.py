"""Property test (issue 20): random strings, numbers and option values thrown at the argument
parsers of ``solve``, ``bench``, ``train``, ``data generate`` and ``harvest`` end in exit
0, 1 or 2 with at most one error line, never in a traceback or an internal error (exit 3).

The work behind a parser (training, generation, harvesting, a bench's runs) is replaced by
stubs that return at once: what is tested is that every option value is either accepted or
refused in one line *before* that work would start. ``sbt solve`` runs its real search on a
tiny random torch model, so its settings reach the backend itself. No results database, model or data folder of the repository is touched.
"""

from __future__ import annotations

import signal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sbt_cli.app import app
from sbt_core.errors import SbtError

runner = CliRunner()

# values a hostile or clumsy user types: edge numbers first, then any number, word or character
EDGES = st.sampled_from(["0", "1", "-1", "2", "32", "1e9", "1000000000", "1e-40", "nan", "inf", "-inf", "1.5",
                         "0.0", "9" * 40, "0x10", "1_000", "", " ", "1,2", "3,4,5", "-0", "+5", "1e308", "-4",
                         "[/]", "[bold]x", "../..", "/", ".", "a,b", "-p", "--n", "width=abc", "n=1e9",
                         "nodes=-1", "bogus=1", "width=1000000"])
NUMBERS = st.one_of(st.integers(min_value=-10**12, max_value=10**12).map(str),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr))
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
VALUES = st.one_of(EDGES, EDGES, NUMBERS, TEXT)
SOLVABLE = st.sampled_from(["2 3 5 -> 30", "25 5 2 7 -> 92", "1 2 3 -> 6", "4 7 8 8 -> 24", "10 20 -> 30"])
PUZZLES = st.one_of(
    SOLVABLE, SOLVABLE, SOLVABLE, SOLVABLE, SOLVABLE, TEXT,
    st.lists(st.integers(min_value=-5, max_value=2_000_000), min_size=0, max_size=8).flatmap(
        lambda ns: st.integers(min_value=-5, max_value=2_000_000).map(
            lambda t: " ".join(map(str, ns)) + " -> " + str(t))),
)


def _ints(lo, hi):
    return st.integers(min_value=lo, max_value=hi).map(str)


# per command: each option with a strategy of values that are valid; a drawn option gets a
# valid value two times in three and a hostile one (VALUES) otherwise, so that runs get past
# the first option and the checks deeper down are reached too
COMMANDS = {
    "solve": {"--method": st.sampled_from(["self-backtrack", "greedy", "beam", "best-of-n", "pass@n", "dfs",
                                           "exact"]),
              "--model": st.sampled_from(["countdown3-backtrack", "countdown4-backtrack"]),
              "--backend": st.just("torch"), "--n": _ints(1, 6), "--b": _ints(0, 2), "--width": _ints(1, 3),
              "--nodes": _ints(1, 8), "--temperature": st.sampled_from(["0", "0.7", "1.0", "2"]),
              "--top-k": _ints(0, 5), "--seed": _ints(0, 3)},
    "bench": {"--split": st.sampled_from(["test_new", "val"]), "--puzzles": TEXT, "--data": TEXT,
              "--methods": st.sampled_from(["greedy", "beam", "best-of-n,self-backtrack", "exact"]),
              "--n": st.sampled_from(["4", "4,8"]), "--b": st.sampled_from(["0", "0,1"]),
              "--model": st.sampled_from(["countdown4-backtrack"]), "--backend": st.just("torch"),
              "--limit": _ints(1, 5), "--seed": _ints(0, 3), "--temperature": st.sampled_from(["0.7", "1"]),
              "--param": st.sampled_from(["width=2", "nodes=4,8", "variant=authors", "variant=all-states,authors"]),
              "--numbers": _ints(3, 4), "--workers": _ints(1, 2)},
    "train": {"--numbers": _ints(3, 4), "--data-dir": TEXT, "--data": st.sampled_from(["op", "op+back"]),
              "--back-ratio": st.sampled_from(["0.5", "1", "2"]), "--kinds": st.sampled_from(["1:2:2", "1:0:0"]),
              "--goal-forcing": st.sampled_from(["0", "0.5"]), "--honest-last": st.sampled_from(["0", "0.5"]),
              "--own-errors": st.sampled_from(["0", "1"]), "--size": st.sampled_from(["tiny", "small"]),
              "--train-puzzles": _ints(1, 100), "--paths": TEXT, "--extra-puzzles": TEXT,
              "--tokens": st.sampled_from(["1e4", "5000"]), "--batch-size": _ints(1, 64),
              "--lr": st.sampled_from(["1e-3", "0.002"]), "--seed": _ints(0, 3), "--eval-every": _ints(1, 100),
              "--eval-puzzles": _ints(1, 10), "--ckpt-every": _ints(1, 100),
              "--precision": st.sampled_from(["auto", "fp32"]), "--compile": st.sampled_from(["off", "auto"]),
              "--threads": _ints(0, 2), "--ema": st.sampled_from(["0", "0.99"])},
    "data generate": {"--numbers": _ints(3, 6), "--train": _ints(0, 50), "--val": _ints(0, 5),
                      "--test-seen": _ints(0, 5), "--test-new": _ints(0, 5), "--seed": _ints(0, 3),
                      "--workers": _ints(0, 2), "--min-number": _ints(1, 5), "--max-number": _ints(10, 99),
                      "--avoid": TEXT},
    "harvest": {"--model": st.sampled_from(["countdown4-backtrack", "countdown3-backtrack"]),
                "--numbers": _ints(3, 4), "--data": TEXT, "--puzzles": _ints(1, 10), "--n": _ints(1, 8),
                "--temperature": st.sampled_from(["0.7", "1"]), "--seed": _ints(0, 3), "--mistakes": _ints(0, 2),
                "--backend": st.just("torch"), "--workers": _ints(1, 2)},
}


class Reached(SbtError):
    """A stub was called: the arguments got past every check (exit 0 for the fuzz)."""

    exit_code = 0


def _stub(*_a, **_k):
    raise Reached("stub reached")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A models folder whose default models are one tiny random torch model (in seconds)."""
    from sbt_core.tokenizer import build_tokenizer
    from training.model import new_model, save_model

    tok = build_tokenizer()
    models = tmp_path_factory.mktemp("fuzz-models")
    for name in ("countdown3-backtrack", "countdown4-backtrack"):
        save_model(new_model(tok, "tiny", seed=0), tok, models / name)
    return models


@pytest.fixture
def sandbox(tmp_path, monkeypatch, tiny_models):
    """Tiny default models, an empty results database, a working folder of its own, and the
    heavy work behind each command replaced by a stub."""
    import harness.harvest
    import harness.runner
    import sbt_core.generate
    import training.sft

    monkeypatch.setenv("SBT_MODELS_DIR", str(tiny_models))
    monkeypatch.setenv("SBT_DB", str(tmp_path / "fuzz.db"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sbt_core.generate, "generate", _stub)
    monkeypatch.setattr(training.sft, "train", _stub)
    monkeypatch.setattr(harness.harvest, "harvest", _stub)
    monkeypatch.setattr(harness.runner.Bench, "run", _stub)
    return tmp_path


class Hang(BaseException):
    """Raised by the alarm: not an Exception, so no handler of sbt can turn it into an exit code."""


def _alarm(signum, frame):
    raise Hang("still running after 20 s")


def _check(args: list[str]) -> None:
    old = signal.signal(signal.SIGALRM, _alarm)  # a hang (an unbounded budget) is a failure
    signal.setitimer(signal.ITIMER_REAL, 20)
    try:
        result = runner.invoke(app, args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    err = result.stderr if result.stderr_bytes is not None else result.output
    assert result.exit_code in (0, 1, 2), (args, result.exit_code, err[-800:])
    assert "Traceback" not in result.output + err, (args, err[-800:])
    assert "internal error" not in err, (args, err[-800:])
    if result.exit_code == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, err[-800:])


def _options(command: str):
    good = COMMANDS[command]
    option = st.sampled_from(sorted(good)).flatmap(
        lambda name: st.tuples(st.just(name), st.one_of(good[name], good[name], VALUES)))
    return st.lists(option, min_size=1, max_size=3).map(lambda pairs: [x for pair in pairs for x in pair])


FUZZ = settings(max_examples=80, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(puzzle=PUZZLES, options=_options("solve"))
def test_solve_parser(sandbox, puzzle, options):
    _check(["solve", *options, "--", puzzle])


@FUZZ
@given(options=_options("bench"))
def test_bench_parser(sandbox, options):
    _check(["bench", "--quiet", *options])


@FUZZ
@given(options=_options("train"))
def test_train_parser(sandbox, options):
    _check(["train", "--out", str(sandbox / "run"), *options])


@FUZZ
@given(options=_options("data generate"))
def test_data_generate_parser(sandbox, options):
    _check(["data", "generate", "--out", str(sandbox / "data"), *options])


@FUZZ
@given(options=_options("harvest"))
def test_harvest_parser(sandbox, options):
    _check(["harvest", "--out", str(sandbox / "paths.jsonl"), *options])
