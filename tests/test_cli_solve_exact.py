"""``sbt solve --method exact`` through Typer's CliRunner and as a real subprocess.

Bad input (issue 2 item 8): exactly one line on stderr, exit code 2, never a traceback;
a well-formed puzzle without a solution says so and exits 1.
"""

from __future__ import annotations

import ast
import json
import operator
import os
import shutil
import subprocess
import sys
from fractions import Fraction

import pytest
from typer.testing import CliRunner

from sbt_cli.app import app
from sbt_core.countdown import Puzzle, verify

runner = CliRunner()

# (puzzle argument, a fragment of the one error line)
BAD = [
    ("", "empty puzzle"),
    ("2 3 5 30", "no arrow"),
    ("2 3 5 ->", "no target after the arrow"),
    ("two three -> five", "'two' is not a whole number"),
    ("2 -3 5 -> 30", "non-negative, got -3"),
    ("2 3 5 -> -30", "non-negative, got -30"),
    ("-1 2 -> 3", "non-negative, got -1"),  # starts with '-': not taken for an option
    ("-5 -> 5", "at least 2 numbers, got 1"),
    ("7 -> 7", "at least 2 numbers, got 1"),
    ("1 2 3 4 5 6 7 -> 8", "at most 6 numbers, got 7"),
    ("1 2 123456789012345678901234567890 -> 3", "at most 1,000,000"),
    ("1 2 -> 3 -> 4", "more than one arrow"),
    ("1 2\x00 -> 3", "control character"),
    ("1 2 -> 3\x1b[2J", "control character"),
    ("1 2\n-> 3", "control character"),
    ("9" * 1_000_000, "too long (1,000,000 characters"),
]


def _one_error_line(stderr: str, fragment: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr[:500]
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0][:300]
    assert len(lines[0]) < 300
    assert "Traceback" not in stderr


@pytest.mark.parametrize("text,fragment", BAD, ids=[repr(t[:16]) for t, _ in BAD])
def test_bad_input_cli_runner(text, fragment):
    res = runner.invoke(app, ["solve", text, "--method", "exact"])
    assert res.exit_code == 2, (res.stdout, res.stderr, res.exception)
    assert isinstance(res.exception, SystemExit)
    assert res.stdout == ""
    _one_error_line(res.stderr, fragment)


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["solve"], "Missing argument 'puzzle'. (see 'sbt solve --help')"),
        (["solve", "2 3 -> 5", "--bogus"], "No such option: --bogus"),
        (["solve", "2 3 -> 5", "extra"], "unexpected extra argument"),
        (["solve", "2 3 -> 5", "--method", "nope"], "unknown method 'nope'"),
        (["solve", "2 3 -> 5", "--method", "exact", "--seed", "x"], "Invalid value for '--seed'"),
        (["solve", "--method", "exact", "--", "-1 2 -> 3"], "non-negative, got -1"),
        (["nope"], "No such command 'nope'"),
    ],
)
def test_usage_errors_are_one_line(args, fragment):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, (res.stdout, res.stderr, res.exception)
    _one_error_line(res.stderr, fragment)


def test_option_values_starting_with_dash_are_left_alone():
    # "-1" after --seed is the seed's value, not a puzzle
    res = runner.invoke(app, ["solve", "--seed", "-1", "2 3 5 -> 30", "--method", "exact", "--json"])
    assert res.exit_code == 0, (res.stdout, res.stderr)
    assert json.loads(res.stdout)["solved"] is True
    # a dash puzzle with options after it still sees those options
    res = runner.invoke(app, ["solve", "-1 2 -> 3", "--method", "exact", "--json"])
    assert res.exit_code == 2 and res.stdout == ""


def _eval(expr: str) -> Fraction:
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}

    def ev(node):
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        raise AssertionError(f"unexpected expression node {ast.dump(node)}")

    return ev(ast.parse(expr, mode="eval").body)


@pytest.mark.parametrize("text", ["2 3 5 -> 30", "[44, 19, 35, 2] -> 64", "2,3,5->30", "8 2 3 → 12",
                                  "1000000 1000000 1000000 1000000 -> 999999"])
def test_json_solved(text):
    res = runner.invoke(app, ["solve", text, "--method", "exact", "--json"])
    assert res.exit_code == 0, (res.stdout, res.stderr)
    assert res.stderr == ""
    out = json.loads(res.stdout)  # exactly one JSON object on stdout
    assert {"puzzle", "method", "solved", "steps", "expression", "stats"} <= set(out)
    assert out["method"] == "exact" and out["solved"] is True
    p = Puzzle(tuple(out["numbers"]), out["target"])
    assert out["puzzle"] == str(p)
    assert isinstance(out["steps"], list) and all(isinstance(s, str) for s in out["steps"])
    assert len(out["steps"]) == len(p.numbers) - 1
    assert verify(p, out["steps"]).ok
    lhs, _, rhs = out["expression"].rpartition(" = ")
    assert int(rhs) == p.target and _eval(lhs) == p.target
    assert sorted(int(t) for t in lhs.replace("(", " ").replace(")", " ").split() if t.isdigit()) == sorted(p.numbers)
    assert isinstance(out["stats"], dict) and "wall_ms" in out["stats"]


def test_json_unsolvable_exits_1():
    res = runner.invoke(app, ["solve", "1 1 -> 100", "--method", "exact", "--json"])
    assert res.exit_code == 1
    out = json.loads(res.stdout)
    assert out["solved"] is False and out["steps"] == [] and out["expression"] is None
    assert out["failure"] == "no_answer"
    assert "Traceback" not in res.stderr


def test_human_output():
    res = runner.invoke(app, ["solve", "2 3 5 -> 30", "--method", "exact"])
    assert res.exit_code == 0 and res.stderr == ""
    assert "2 3 5 -> 30" in res.stdout and "= 30" in res.stdout
    res = runner.invoke(app, ["solve", "99 98 97 96 -> 11", "--method", "exact"])
    assert res.exit_code == 1
    assert "no solution" in res.stdout.lower()


def test_seeds_do_not_matter_for_exact():
    a = runner.invoke(app, ["solve", "2 3 5 7 -> 17", "-m", "exact", "--json", "--seed", "1"])
    b = runner.invoke(app, ["solve", "2 3 5 7 -> 17", "-m", "exact", "--json", "--seed", "2"])
    assert json.loads(a.stdout)["steps"] == json.loads(b.stdout)["steps"]


# ---- the installed console script, as a user runs it ----

def _sbt() -> list[str]:
    exe = shutil.which("sbt")
    return [exe] if exe else [sys.executable, "-m", "sbt_cli.app"]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "COLUMNS": "100"}
    env.pop("SBT_DEBUG", None)
    return subprocess.run([*_sbt(), *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("", "empty puzzle"),
        ("-1 2 -> 3", "non-negative, got -1"),
        ("1 2\x07 -> 3", "control character"),
        # argv caps one argument at 128 KiB (MAX_ARG_STRLEN), so the 1 MB case runs through CliRunner
        ("9" * 100_000, "too long (100,000 characters"),
    ],
    ids=["empty", "dash", "bell", "100kB"],
)
def test_subprocess_bad_input(text, fragment):
    r = _run("solve", text, "--method", "exact")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    _one_error_line(r.stderr, fragment)


def test_subprocess_solved_and_unsolvable():
    r = _run("solve", "2 3 5 -> 30", "--method", "exact", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["solved"] is True
    r = _run("solve", "1 1 -> 100", "--method", "exact")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "no solution" in r.stdout.lower()
