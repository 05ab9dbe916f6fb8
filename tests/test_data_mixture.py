"""Training data that covers what users type: number distributions (uniform, log-uniform, a
share of small-number puzzles), the 24 game held out of training, the extra test files
(data/countdown4/game24.jsonl, data/countdown3/small12.jsonl) and --avoid with a puzzle file."""

from __future__ import annotations

import itertools
import json
from functools import cache
from pathlib import Path

import pytest
from typer.testing import CliRunner

import sbt_core.generate as gen
from sbt_cli.app import app
from sbt_core.countdown import Puzzle, verify
from sbt_core.errors import SbtError
from sbt_core.generate import GeneratorConfig, generate, generate_split, read_puzzles
from sbt_core.solver import solve

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
GAME24 = DATA / "countdown4" / "game24.jsonl"
SMALL12 = DATA / "countdown3" / "small12.jsonl"
GAME24_CMD = ["data", "testset", "--numbers", "4", "--max-number", "13", "--min-target", "24",
              "--max-target", "24", "--all"]
SMALL12_CMD = ["data", "testset", "--numbers", "3", "--max-number", "12", "--min-target", "10",
               "--max-target", "100", "--count", "1000", "--seed", "0"]


def _invoke(args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_error_line(res) -> str:
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def _lines(path: Path, k: int | None = None) -> bytes:
    lines = path.read_bytes().splitlines(keepends=True)
    return b"".join(lines if k is None else lines[:k])


@pytest.fixture
def small_chunks(monkeypatch):
    # fewer draws wasted past the last row (tests that compare no bytes with shipped files:
    # the chunk size is part of the random stream)
    monkeypatch.setattr(gen, "CHUNK", 100)


def _keys(rows) -> set:
    return {(tuple(sorted(r["numbers"])), r["target"]) for r in rows}


# ---- the default draws what it always drew, and meta.json stays as it was ----

def test_default_reproduces_the_shipped_splits(tmp_path):
    # countdown3's val: one chunk of draws (the chunk size is part of the stream); test_new and
    # train of the default stream: the next test
    generate(GeneratorConfig(n_numbers=3, seed=0, sizes={"train": 0, "val": 1000, "test_seen": 0,
                                                         "test_new": 0}), tmp_path / "c3", workers=1)
    assert _lines(tmp_path / "c3" / "val.jsonl") == _lines(DATA / "countdown3" / "val.jsonl")


def test_default_meta_json_is_byte_identical(tmp_path, monkeypatch):
    # the shipped countdown3-small (README: --max-number 12 --train 2400 --test-new 300 --avoid data/countdown3)
    monkeypatch.chdir(REPO)  # meta.json records --avoid as it was typed
    meta = json.loads((DATA / "countdown3-small" / "meta.json").read_text())
    cfg = GeneratorConfig(n_numbers=3, seed=0, max_number=12, sizes=dict(meta["sizes"]))
    generate(cfg, tmp_path / "small", workers=1, avoid=Path("data/countdown3"))
    for name in ("meta.json", "test_new.jsonl"):
        assert (tmp_path / "small" / name).read_bytes() == (DATA / "countdown3-small" / name).read_bytes(), name


# ---- number distributions ----

def test_small_share_mixture_and_meta(tmp_path, small_chunks):
    cfg = GeneratorConfig(n_numbers=4, seed=5, small_share=0.3, small_max=13,
                          sizes={"train": 1000, "val": 0, "test_seen": 0, "test_new": 0})
    generate(cfg, tmp_path / "mix", workers=1)
    rows = [json.loads(x) for x in (tmp_path / "mix" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 1000 and all(1 <= x <= 99 for r in rows for x in r["numbers"])
    assert [r["id"] for r in rows] == [f"train-{i:06d}" for i in range(1000)] and len(_keys(rows)) == 1000
    small = sum(max(r["numbers"]) <= 13 for r in rows)
    assert 300 <= small <= 305, small  # exactly 30% from the small stream, a rare one from the paper's
    assert sum(max(r["numbers"]) <= 13 for r in rows[:100]) >= 30  # spread over the split, not at its end
    meta = json.loads((tmp_path / "mix" / "meta.json").read_text())
    assert (meta["number_dist"], meta["small_share"], meta["small_max"]) == ("uniform", 0.3, 13)
    assert meta["small_written"] == {"train": small}
    assert "hold_out_24" not in meta  # on: the default, not written
    # the other 70% are the paper's train puzzles, in their order; those almost never have
    # four numbers <= 13
    plain = generate_split(GeneratorConfig(n_numbers=4, seed=5, sizes={"train": 700}), "train", set())
    paper = [r for i, r in enumerate(rows) if (i + 1) * 3 // 10 == i * 3 // 10]
    assert [(r["numbers"], r["target"]) for r in paper] == [(r["numbers"], r["target"]) for r in plain]
    assert sum(max(r["numbers"]) <= 13 for r in plain) < 5
    # val and test stay the paper's: the same bytes as without the mixture
    sizes = {"train": 40, "val": 30, "test_seen": 30, "test_new": 30}
    generate(GeneratorConfig(n_numbers=4, seed=5, sizes=sizes), tmp_path / "paper", workers=1)
    for name, kw in (("share", {"small_share": 0.5}), ("log", {"number_dist": "loguniform"})):
        generate(GeneratorConfig(n_numbers=4, seed=5, sizes=sizes, **kw), tmp_path / name, workers=1)
        for split in gen.EVAL_SPLITS:
            assert (tmp_path / name / f"{split}.jsonl").read_bytes() == \
                (tmp_path / "paper" / f"{split}.jsonl").read_bytes(), (name, split)
        assert (tmp_path / name / "train.jsonl").read_bytes() != (tmp_path / "paper" / "train.jsonl").read_bytes()
    # the small range must hold the share: refused at once, before anything is written
    with pytest.raises(SbtError, match=r"--small-share 0\.5 of --train: only [\d,]+ distinct solvable puzzles "
                                       r"with numbers 1\.\.4"):
        generate(GeneratorConfig(n_numbers=3, seed=5, small_share=0.5, small_max=4, sizes={"train": 400}),
                 tmp_path / "nope", workers=1)
    assert not (tmp_path / "nope").exists()


def test_loguniform_draws_small_numbers_often(small_chunks):
    cfg = GeneratorConfig(n_numbers=3, seed=2, number_dist="loguniform", sizes={"train": 1500})
    rows = generate_split(cfg, "train", set())
    numbers = [x for r in rows for x in r["numbers"]]
    assert all(1 <= x <= 99 for x in numbers) and max(numbers) > 80
    share = sum(x <= 13 for x in numbers) / len(numbers)
    assert 0.5 < share < 0.75, share  # P(k) ~ 1/k: H(13) / H(99) = 0.61 before the solvable filter
    assert numbers.count(1) > 3 * numbers.count(50)
    uniform = [x for r in generate_split(GeneratorConfig(n_numbers=3, seed=2, sizes={"train": 1500}), "train",
                                         set()) for x in r["numbers"]]
    assert sum(x <= 13 for x in uniform) / len(uniform) < 0.2


# ---- the 24 game is held out of training ----

def test_game24_never_in_train_even_where_it_is_likely(tmp_path, small_chunks):
    # numbers 1..13 and targets 20..30 (24 among the seen targets): one train puzzle in 11 would be one
    cfg = {"n_numbers": 4, "seed": 1, "max_number": 13, "min_target": 20, "max_target": 30}
    assert 24 in GeneratorConfig(**cfg).targets()[0]
    sizes = {"train": 600, "val": 60, "test_seen": 0, "test_new": 0}
    generate(GeneratorConfig(**cfg, sizes=sizes), tmp_path / "held", workers=1)
    train = read_puzzles(tmp_path / "held" / "train.jsonl")
    assert len(train) == 600 and not [p for p in train if p.target == 24]
    assert "hold_out_24" not in json.loads((tmp_path / "held" / "meta.json").read_text())
    # eval splits may hold them (they are test puzzles); without the rule train does too
    off = generate_split(GeneratorConfig(**cfg, hold_out_24=False, sizes=sizes), "train", set())
    assert sum(r["target"] == 24 for r in off) > 20
    # a small-number share of a 1..99 set: no 24-game puzzle either
    mixed = generate_split(GeneratorConfig(n_numbers=4, seed=1, min_target=20, max_target=30, small_share=1.0,
                                           sizes={"train": 600}), "train", set())
    assert all(max(r["numbers"]) <= 13 for r in mixed) and not [r for r in mixed if r["target"] == 24]
    res = _invoke(["data", "generate", "--numbers", "4", "--seed", "1", "--max-number", "13", "--min-target", "20",
                   "--max-target", "30", "--train", "50", "--val", "0", "--test-seen", "0", "--test-new", "0",
                   "--no-hold-out-24", "--out", tmp_path / "off", "--workers", "1"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert json.loads((tmp_path / "off" / "meta.json").read_text())["hold_out_24"] is False


@cache
def _values(numbers: tuple[int, ...]) -> frozenset:
    """Every value the game's steps can end in, played literally: pick two numbers, replace
    them by a + b, a - b (a >= b), a * b or a / b (exact, b > 0), until one is left."""
    if len(numbers) == 1:
        return frozenset(numbers)
    out = set()
    for i, j in itertools.combinations(range(len(numbers)), 2):
        a, b = max(numbers[i], numbers[j]), min(numbers[i], numbers[j])
        rest = [x for k, x in enumerate(numbers) if k not in (i, j)]
        for r in {a + b, a - b, a * b, *([a // b] if b and a % b == 0 else [])}:
            out |= _values(tuple(sorted(rest + [r])))
    return frozenset(out)


def test_game24_file_is_every_solvable_24_game():
    rows = [json.loads(x) for x in GAME24.read_text().splitlines()]
    brute = [m for m in itertools.combinations_with_replacement(range(1, 14), 4) if 24 in _values(m)]
    assert len(rows) == len(brute) == 1346
    assert [tuple(r["numbers"]) for r in rows] == brute  # sorted, each once, numbers ascending
    assert [r["id"] for r in rows] == [f"game24-{i:06d}" for i in range(len(rows))]
    assert all(r["target"] == 24 and r["split"] == "game24" and set(r) == {"id", "split", "numbers", "target"}
               for r in rows)
    for r in rows:
        p = Puzzle(tuple(r["numbers"]), 24)
        assert verify(p, [str(s) for s in solve(p)]).ok, r
    # a 24-game set that is not solvable stays out (1, 1, 1, 1 and the like)
    assert (1, 1, 1, 1) not in set(brute) and 24 not in _values((1, 1, 1, 1))


def test_testset_command_regenerates_the_shipped_files(tmp_path):
    for cmd, shipped in ((GAME24_CMD, GAME24), (SMALL12_CMD, SMALL12)):
        out = tmp_path / shipped.name
        res = _invoke([*cmd, "--out", out])
        assert res.exit_code == 0, (res.output, res.exception)
        assert out.read_bytes() == shipped.read_bytes(), shipped
        # never replaced without --overwrite; with it, the same bytes again
        out.write_text("mine\n")
        assert "already exists" in _one_error_line(_invoke([*cmd, "--out", out]))
        assert out.read_text() == "mine\n"
        assert _invoke([*cmd, "--out", out, "--overwrite"]).exit_code == 0
        assert out.read_bytes() == shipped.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["game24.jsonl", "small12.jsonl"]  # no temp, no lock


def test_small12_file():
    puzzles = read_puzzles(SMALL12)
    assert len(puzzles) == 1000 and len({p.key for p in puzzles}) == 1000
    assert all(len(p.numbers) == 3 and 1 <= min(p.numbers) and max(p.numbers) <= 12 for p in puzzles)
    assert all(10 <= p.target <= 100 for p in puzzles)
    assert len({p.target for p in puzzles}) > 80  # every target of the range, held-out ones too
    assert all(solve(p) for p in puzzles)


# ---- --avoid with a puzzle file ----

def test_avoid_a_puzzle_file(tmp_path, monkeypatch, small_chunks):
    monkeypatch.chdir(REPO)
    small12 = {p.key for p in read_puzzles(SMALL12)}
    cfg = GeneratorConfig(n_numbers=3, seed=0, max_number=12, small_share=0.0,
                          sizes={"train": 1500, "val": 0, "test_seen": 0, "test_new": 0})
    plain = generate_split(cfg, "train", set())
    assert len(_keys(plain) & small12) > 50  # the same distribution: they would be drawn
    avoid = [Path("data/countdown3"), Path("data/countdown3/small12.jsonl")]
    generate(cfg, tmp_path / "c3s", workers=1, avoid=avoid)
    train = read_puzzles(tmp_path / "c3s" / "train.jsonl")
    assert len(train) == 1500 and not {p.key for p in train} & small12
    assert not {p.key for p in train} & gen.eval_puzzle_keys(DATA / "countdown3")
    meta = json.loads((tmp_path / "c3s" / "meta.json").read_text())
    assert meta["avoided"] == [{"data_dir": "data/countdown3", "puzzles": 11000},
                               {"file": "data/countdown3/small12.jsonl", "puzzles": 1000}]
    # one file alone, through the command line
    res = _invoke(["data", "generate", "--numbers", "3", "--max-number", "12", "--train", "300", "--val", "0",
                   "--test-seen", "0", "--test-new", "0", "--avoid", "data/countdown3/small12.jsonl",
                   "--out", tmp_path / "one", "--workers", "1"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert json.loads((tmp_path / "one" / "meta.json").read_text())["avoided"] == {
        "file": "data/countdown3/small12.jsonl", "puzzles": 1000}
    assert not {p.key for p in read_puzzles(tmp_path / "one" / "train.jsonl")} & small12
    with pytest.raises(SbtError, match="rules 'all', these for 'any'"):
        gen.avoided_puzzles(GeneratorConfig(n_numbers=3, rules="any"), SMALL12)


# ---- bad values: one line, exit 2 ----

BAD = [
    (["data", "generate", "--number-dist", "zipf"], "--number-dist must be one of uniform, loguniform"),
    (["data", "generate", "--small-share", "1.5"], "--small-share must be between 0 and 1"),
    (["data", "generate", "--small-share", "nan"], "--small-share must be between 0 and 1"),
    (["data", "generate", "--small-share", "0.2", "--small-max", "120"], "--small-max must be a whole number between 1 and 99"),
    (["data", "generate", "--small-max", "9"], "--small-max needs --small-share"),
    (["data", "generate", "--avoid", "no/such/dir"], "no readable meta.json (not an `sbt data generate` folder, nor a puzzle file)"),
    (["data", "testset", "--count", "10", "--all"], "exactly one of --all"),
    (["data", "testset"], "exactly one of --all"),
    (["data", "testset", "--count", "0"], "--count must be a whole number between 1 and"),
    (["data", "testset", "--numbers", "6", "--max-number", "99", "--all"], "more than the 2,000,000"),
    (["data", "testset", "--numbers", "3", "--max-number", "2", "--count", "500"], "--count: only"),
    (["data", "testset", "--numbers", "9", "--all"], "--numbers must be between 3 and 6"),
]


@pytest.mark.parametrize("args,fragment", BAD, ids=[" ".join(a[1:3]) + f"-{i}" for i, (a, _) in enumerate(BAD)])
def test_bad_values_one_line_exit_2(tmp_path, args, fragment):
    out = tmp_path / ("x" if args[1] == "generate" else "x.jsonl")
    line = _one_error_line(_invoke([*args, "--out", out]))
    assert fragment in line, line
    assert not out.exists()


def test_testset_out_must_be_a_jsonl_file(tmp_path):
    assert ".jsonl file" in _one_error_line(_invoke([*GAME24_CMD, "--out", tmp_path / "game24.txt"]))
    assert "is a folder" in _one_error_line(_invoke([*GAME24_CMD, "--out", tmp_path]))
