"""The seeded generator: determinism, prefix stability, disjoint splits, held-out targets, JSONL io."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import sbt_core.generate as gen
from sbt_core.countdown import Puzzle, verify
from sbt_core.errors import SbtError
from sbt_core.generate import GeneratorConfig, generate, generate_split, read_puzzles, write_jsonl
from sbt_core.solver import solve

SIZES = {"train": 300, "val": 40, "test_seen": 60, "test_new": 60}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    # the properties hold for any chunk size; small chunks keep the tests fast and make
    # every split span several chunks (forked workers inherit the patched value)
    monkeypatch.setattr(gen, "CHUNK", 25)


def _load(d: Path) -> dict[str, list[dict]]:
    return {s: [json.loads(x) for x in (d / f"{s}.jsonl").read_text().splitlines()] for s in gen.SPLITS}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setattr(gen, "CHUNK", 25)
    try:
        d = tmp_path_factory.mktemp("cd4")
        written = generate(GeneratorConfig(seed=7, sizes=dict(SIZES)), d, workers=1)
        return d, written, _load(d)
    finally:
        mp.undo()


def test_sizes_files_and_rows(generated):
    d, written, rows = generated
    assert written == SIZES
    for split, items in rows.items():
        assert len(items) == SIZES[split]
        assert [r["id"] for r in items] == [f"{split}-{i:06d}" for i in range(len(items))]
        for r in items:
            assert r["split"] == split and set(r) == {"id", "split", "numbers", "target"}
            assert len(r["numbers"]) == 4 and all(1 <= x <= 99 for x in r["numbers"])
            assert 10 <= r["target"] <= 100
    meta = json.loads((d / "meta.json").read_text())
    assert meta["written"] == SIZES and meta["seed"] == 7
    assert not list(d.glob("*.tmp"))


def test_deterministic_per_seed(generated, tmp_path):
    d, _, rows = generated
    generate(GeneratorConfig(seed=7, sizes=dict(SIZES)), tmp_path, workers=1)
    for split in gen.SPLITS:
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (d / f"{split}.jsonl").read_bytes()
    other = generate_split(GeneratorConfig(seed=8, sizes=dict(SIZES)), "train", set())
    assert [r["numbers"] for r in other] != [r["numbers"] for r in rows["train"]]


def test_prefix_stability(generated, tmp_path):
    _, _, rows = generated
    sizes = dict(SIZES, train=90)
    generate(GeneratorConfig(seed=7, sizes=sizes), tmp_path, workers=1)
    small = _load(tmp_path)
    assert small["train"] == rows["train"][:90]
    for split in gen.EVAL_SPLITS:  # the size of train never changes val or test
        assert small[split] == rows[split]


def test_workers_do_not_change_the_output():
    cfg = GeneratorConfig(seed=3, sizes={"train": 230})
    one = generate_split(cfg, "train", set(), workers=1)
    two = generate_split(cfg, "train", set(), workers=2)
    assert one == two


def test_splits_disjoint(generated):
    _, _, rows = generated
    keys = {s: [(tuple(sorted(r["numbers"])), r["target"]) for r in items] for s, items in rows.items()}
    for s, k in keys.items():
        assert len(set(k)) == len(k), f"duplicate (multiset, target) inside {s}"
    splits = list(keys)
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            assert not set(keys[a]) & set(keys[b]), (a, b)


def test_held_out_targets(generated):
    _, _, rows = generated
    seen, held = GeneratorConfig(seed=7).targets()
    assert len(held) == 9 and len(seen) == 82 and not set(seen) & set(held)
    assert sorted(seen + held) == list(range(10, 101))
    assert {r["target"] for r in rows["test_new"]} <= set(held)
    for split in ("train", "val", "test_seen"):
        assert not {r["target"] for r in rows[split]} & set(held), split
    # fixed by the seed
    assert GeneratorConfig(seed=7).targets() == (seen, held)
    assert GeneratorConfig(seed=8).targets()[1] != held


def test_all_puzzles_solvable(generated):
    _, _, rows = generated
    for items in rows.values():
        for r in items:
            p = Puzzle(tuple(r["numbers"]), r["target"])
            sol = solve(p)
            assert sol is not None and verify(p, [str(s) for s in sol]).ok, r


@pytest.mark.parametrize("n", [3, 5])
def test_other_sizes(n):
    rows = generate_split(GeneratorConfig(n_numbers=n, seed=1, sizes={"train": 30}), "train", set())
    assert len(rows) == 30 and all(len(r["numbers"]) == n for r in rows)
    assert all(solve(Puzzle(tuple(r["numbers"]), r["target"])) for r in rows)


@pytest.mark.parametrize("kwargs", [{"n_numbers": 2}, {"n_numbers": 7}, {"min_number": 5, "max_number": 4},
                                    {"min_target": 50, "max_target": 10}])
def test_config_refused(kwargs):
    with pytest.raises(SbtError):
        GeneratorConfig(**kwargs)


def test_taken_is_respected():
    cfg = GeneratorConfig(seed=0, sizes={"val": 50})
    first = generate_split(cfg, "val", set())
    taken = {(tuple(sorted(r["numbers"])), r["target"]) for r in first[:20]}
    again = generate_split(cfg, "val", set(taken))
    assert not {(tuple(sorted(r["numbers"])), r["target"]) for r in again} & taken


# ---- read_puzzles ----

def test_read_puzzles_round_trip(generated, tmp_path):
    d, _, rows = generated
    ps = read_puzzles(d / "val.jsonl")
    assert ps == [Puzzle(tuple(r["numbers"]), r["target"]) for r in rows["val"]]
    assert read_puzzles(d / "val.jsonl", limit=5) == ps[:5]
    f = tmp_path / "x.jsonl"
    write_jsonl(f, [{"numbers": [1, 2], "target": 3}])
    f.write_text(f.read_text() + "\n   \n")  # blank lines are skipped
    assert read_puzzles(str(f)) == [Puzzle((1, 2), 3)]


BAD_LINES = [
    ("not json", "not valid JSON"),
    ('{"numbers": [1, 2]}', "needs 'numbers'"),
    ('{"target": 3}', "needs 'numbers'"),
    ('[1, 2, 3]', "not a puzzle object"),
    ('"1 2 -> 3"', "not a puzzle object"),
    ("null", "not a puzzle object"),
    ('{"numbers": [1.5, 2], "target": 3}', "not a puzzle object"),
    ('{"numbers": [true, 2], "target": 3}', "not a puzzle object"),
    ('{"numbers": "12", "target": 3}', "not a puzzle object"),
    ('{"numbers": [1, 2], "target": "3"}', "not a puzzle object"),
    ('{"numbers": [[1], 2], "target": 3}', "not a puzzle object"),
    ('{"numbers": [Infinity, 2], "target": 3}', "not a puzzle object"),
    ('{"numbers": [NaN, 2], "target": 3}', "not a puzzle object"),
    ('{"numbers": [-1, 2], "target": 3}', "non-negative"),
    ('{"numbers": [1], "target": 3}', "at least 2 numbers"),
    ('{"numbers": [1, 2, 3, 4, 5, 6, 7], "target": 3}', "at most 6 numbers"),
    ('{"numbers": [1, 2], "target": 10000000}', "at most 1,000,000"),
    ("[" * 100_000, "JSON"),
]


@pytest.mark.parametrize("line,fragment", BAD_LINES, ids=[b[:20] for b, _ in BAD_LINES])
def test_read_puzzles_bad_lines(tmp_path, line, fragment):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"numbers": [1, 2], "target": 3}\n\n' + line + "\n")
    with pytest.raises(SbtError) as info:
        read_puzzles(f)
    msg = str(info.value)
    assert msg.startswith(f"{f}:3: ") and fragment in msg and "\n" not in msg


def test_read_puzzles_binary_and_missing(tmp_path):
    f = tmp_path / "bin.jsonl"
    f.write_bytes(b"\xff\xfe\x00garbage\x80\n")
    with pytest.raises(SbtError, match=r":1: not valid JSON"):
        read_puzzles(f)
    with pytest.raises(SbtError, match="puzzle file not found"):
        read_puzzles(tmp_path / "nope.jsonl")
    with pytest.raises(SbtError, match="puzzle file not found"):
        read_puzzles(tmp_path)  # a folder


def test_cli_data_generate(tmp_path):
    from typer.testing import CliRunner

    from sbt_cli.app import app

    out = tmp_path / "cd3"
    res = CliRunner().invoke(app, ["data", "generate", "--numbers", "3", "--train", "40", "--val", "5",
                                   "--test-seen", "5", "--test-new", "5", "--seed", "1", "--out", str(out),
                                   "--workers", "1"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "wrote val=5, test_seen=5, test_new=5, train=40" in res.stdout
    assert len(read_puzzles(out / "train.jsonl")) == 40
    bad = CliRunner().invoke(app, ["data", "generate", "--numbers", "9", "--out", str(out)])
    assert bad.exit_code == 2 and bad.stderr.strip() == "error: --numbers must be between 3 and 6, got 9"


def test_number_range_exhaustion_and_avoid(tmp_path, generated, monkeypatch):
    base, _, rows = generated
    monkeypatch.setattr(gen, "MAX_DRAWS", 50)  # unreachable targets are given up sooner
    # a narrow number range: every number inside it, and one clear error when it runs out
    small = GeneratorConfig(seed=7, max_number=6, sizes={"train": 30})
    out = generate(small, tmp_path / "small", workers=1, avoid=base)
    got = read_puzzles(tmp_path / "small" / "train.jsonl")
    assert out["train"] == 30 and all(max(p.numbers) <= 6 for p in got)
    meta = json.loads((tmp_path / "small" / "meta.json").read_text())
    assert meta["max_number"] == 6 and meta["avoided"]["puzzles"] == sum(len(rows[s]) for s in gen.EVAL_SPLITS)
    tiny = GeneratorConfig(n_numbers=3, seed=7, max_number=3, sizes={"train": 10_000})
    with pytest.raises(SbtError, match=r"only [\d,]+ distinct solvable puzzles with numbers 1\.\.3"):
        generate(tiny, tmp_path / "tiny", workers=1)  # counted and refused before anything is written
    assert not (tmp_path / "tiny").exists()
    # the generator's own stall check, the last word on what the count lets through
    with pytest.raises(SbtError, match=r"train: only [\d,]+ distinct solvable puzzles with numbers 1\.\.3"):
        generate_split(tiny, "train", set())
    # --avoid: none of the other folder's eval puzzles is drawn, even where the range allows it
    evals = {(tuple(sorted(r["numbers"])), r["target"]) for s in gen.EVAL_SPLITS for r in rows[s]}
    again = generate_split(GeneratorConfig(seed=7, sizes={"train": 200}), "train", gen.avoided_puzzles(
        GeneratorConfig(seed=7), base))
    assert not evals & {(tuple(sorted(r["numbers"])), r["target"]) for r in again}
    with pytest.raises(SbtError, match="held-out targets differ"):
        gen.avoided_puzzles(GeneratorConfig(seed=8), base)
    with pytest.raises(SbtError, match="no readable meta.json"):
        gen.avoided_puzzles(GeneratorConfig(seed=7), tmp_path / "nowhere")
    with pytest.raises(SbtError, match="--min-number must be at least 1"):
        GeneratorConfig(min_number=0)
