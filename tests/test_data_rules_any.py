"""Training data under TV rules ("any": any subset of the numbers; issue 24): D_op and D_back
are built under the puzzle's own rules, sbt's tokenizer spells `` (any)`` as one token for
models trained on such data, and `sbt train` trains on it. Rules "all" stay as they were:
the same examples and the same token ids, pinned here on hashes computed before the change."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from sbt_core.countdown import Failure, Puzzle, Step, parse_step, replay, verify
from sbt_core.generate import read_puzzles
from sbt_core.solver import first_wrong_step, is_solvable
from sbt_core.tokenizer import build_tokenizer
from sbt_core.trace import BACKTRACK, GOAL, prompt
from training.data import Recipe, build_examples, encode, examples_for, path_examples

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"

# the recipes the pins cover: sbt's default, the paper's, honest-last with a fractional back ratio, SFT
RECIPES = {"sbt": Recipe(), "paper": Recipe(goal_forcing=0.0),
           "honest": Recipe(back_ratio=1.5, honest_last=0.5), "op": Recipe(data="op")}


def _digest(examples) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.prompt, ex.response, ex.kind, [list(m) for m in ex.masked]]).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- rules "all": unchanged

# sha256 of the examples (text, kind, masks, in order) built at HEAD before rules "any" were
# trainable (commit 767c7f5), seed 7
ALL_PINS = {
    ("countdown3/val.jsonl", 200, "sbt"): "78b0dccfaac64fd4a7249cc7eca9daf9859aeb74462b80b2cf3dc58464f035fd",
    ("countdown3/val.jsonl", 200, "paper"): "08d986374485ec087c351334c20ab401f6319c6d421adb3141def88b5b4a5150",
    ("countdown3/val.jsonl", 200, "honest"): "29d558e132cfed62c3d281866b9d80bf7536c7ac8737ea6cc2f2b17336fb899a",
    ("countdown3/val.jsonl", 200, "op"): "fdb746fcf094fed95ee166a78c32c3e58cb5487b5542e425202bdb6f7143fcfc",
    ("countdown4/val.jsonl", 100, "sbt"): "c49bdb37c72965f987cb8695f3cb66250efa382a6598310c66e9c6d3395ab799",
    ("countdown4/val.jsonl", 100, "paper"): "79931478df1b7fb37c773e6cf272ac7c640add47787f121d79054b838e38e3ef",
    ("countdown4/val.jsonl", 100, "honest"): "9b4f2a4a29cbc10b209a6be03543c2238f1db26316de05773d92cee9b4b36664",
    ("countdown4/val.jsonl", 100, "op"): "d81837c1374117c0bb7700bf764e304fe39f28a90981a6cc4b77a65533758bab",
    # (train.jsonl is not in git: checked where it was generated, `sbt data generate --numbers 3`)
    ("countdown3/train.jsonl", 200, "sbt"): "861802bc337b1d0457885f949ff52866961ebb8ea5f2cb5fb9f32b630ab92587",
    ("countdown3/train.jsonl", 200, "paper"): "38ed58ec1b53960c26524d556591188c030128a5026477f159d14ac15068a671",
    ("countdown3/train.jsonl", 200, "honest"): "a2da9a95904a66f65a406b8bbb5f57c84a9e0f02ae8ab31f2b0a8c1380b04a31",
    ("countdown3/train.jsonl", 200, "op"): "473bf52d0010c4e8aefe77ceb985c610e7f7b30d8b849ad7b885a02efce0c36b",
}
# path_examples on the shipped paths file (150 puzzles, honest-last 0.3, seed 3): digest-dropped-count
PATHS_PIN = "c00377729dfd78c627af8c4d27202d26da05c375e8571c3c37b48ff0bec2aa53-0-342"


def test_rules_all_examples_are_the_ones_built_before_rules_any():
    checked = 0
    for (file, n, recipe), pin in ALL_PINS.items():
        if not (DATA / file).is_file():
            continue
        assert _digest(build_examples(read_puzzles(DATA / file, n), RECIPES[recipe], seed=7)) == pin, (file, recipe)
        checked += 1
    assert checked >= 8  # (the tracked val files at least)
    ex, dropped = path_examples(DATA / "countdown3/rft-round1-paths.jsonl.gz", 150, Recipe(honest_last=0.3), seed=3)
    assert f"{_digest(ex)}-{dropped}-{len(ex)}" == PATHS_PIN


def _all_texts():
    """A few hundred rules-"all" training examples (every kind), from the tracked val files."""
    exs = list(build_examples(read_puzzles(DATA / "countdown3/val.jsonl", 150), Recipe(honest_last=0.5), seed=5))
    exs += list(build_examples(read_puzzles(DATA / "countdown4/val.jsonl", 100), Recipe(honest_last=0.5), seed=5))
    return exs


# sha256 of (ids, labels) of ``encode`` for those examples with build_tokenizer() at commit 767c7f5
ENCODED_PIN = "aaff86943455e44106603a36d51f8dbfc22a5e8268d5d90538064dbae0a6121d"


def test_rules_all_texts_keep_their_token_ids():
    from tokenizers import Tokenizer

    exs = _all_texts()
    assert len(exs) > 500 and {e.kind for e in exs} >= {"op", "exploration", "computational", "rule",
                                                         "goal-claim", "honest-last"}
    tok = build_tokenizer()
    assert len(tok) == 38  # the vocabulary every sbt model so far was built with
    h = hashlib.sha256()
    for ex in exs:
        h.update(json.dumps(list(encode(ex, tok))).encode())
    assert h.hexdigest() == ENCODED_PIN
    shipped = Tokenizer.from_file(str(REPO / "models/countdown4-backtrack/tokenizer.json"))
    for ex in exs:  # and the ids the shipped models read
        assert tok(ex.text)["input_ids"] == shipped.encode(ex.text).ids, ex.text


# --------------------------------------------------------------------------- the tokenizer under "any"


def test_a_tokenizer_for_rules_any_spells_the_mark_as_one_token():
    plain, tv = build_tokenizer(), build_tokenizer("any")
    assert len(tv) == len(plain) + 1  # one new id, after every old one
    p = Puzzle((25, 50, 75, 100, 3, 6), 952, "any")
    text = prompt(p) + "100 + 6 = 106\n" + GOAL
    ids = tv(text, add_special_tokens=False)["input_ids"]
    assert tv.decode(ids) == text
    mark = tv(" (any)", add_special_tokens=False)["input_ids"]
    assert len(mark) == 1 and mark[0] == len(plain)
    # without the mark the text is the rules-"all" text, id for id
    assert [i for i in ids if i != mark[0]] == plain(text.replace(" (any)", ""), add_special_tokens=False)["input_ids"]
    for ex in _all_texts()[:200]:  # a tokenizer for "any" reads rules-"all" texts as the old one does
        assert tv(ex.text)["input_ids"] == plain(ex.text)["input_ids"]
    with pytest.raises(Exception, match="rules"):
        build_tokenizer("some")


# --------------------------------------------------------------------------- D_op / D_back under "any"


def _any_puzzles(n_numbers: int, count: int, seed: int = 0, top: int = 99,
                 targets: tuple[int, int] = (100, 999)) -> list[Puzzle]:
    """Distinct puzzles solvable under rules "any": numbers 1..top, targets in ``targets``
    (the defaults: the TV game's ranges)."""
    rng, out, seen = random.Random(f"tv-{n_numbers}-{seed}"), [], set()
    while len(out) < count:
        numbers = tuple(rng.randint(1, top) for _ in range(n_numbers))
        target = rng.randint(*targets)
        if (numbers, target) not in seen and is_solvable(numbers, target, "any"):
            seen.add((numbers, target))
            out.append(Puzzle(numbers, target, "any"))
    return out


def _steps(text: str) -> list[Step]:
    lines = text.split("\n")[:-1]  # (the marker line last)
    steps = [parse_step(x) for x in lines]
    assert None not in steps, text
    return steps


def _check_any_examples(puzzle: Puzzle, examples) -> None:
    for ex in examples:
        assert ex.prompt == prompt(puzzle) and ex.prompt.endswith(" (any)\n###Response:\n")
        steps = _steps(ex.response)
        made = [i for i, m in enumerate(replay(puzzle, steps)) if m.ok and m.step.result == puzzle.target]
        if ex.kind == "op":
            assert ex.response.endswith(GOAL) and verify(puzzle, steps).ok, ex.response
            assert made == [len(steps) - 1], ex.response  # it stops where it makes the target
            continue
        assert ex.response.endswith("\n" + BACKTRACK), ex.response
        wrong = len(steps) - 1
        assert made in ([], [wrong]), ex.response  # no earlier step made the target (that answer was complete)
        if ex.kind == "goal-claim":  # correct steps into a dead end, then the target as a wrong result
            v = verify(puzzle, steps)
            assert (v.failure, v.step_index) == (Failure.INCORRECT_RESULT, wrong), ex.response
            assert steps[-1].result == puzzle.target
            continue
        # the prefix right, the last step wrong under "any" (rules, arithmetic or a dead end)
        assert first_wrong_step(puzzle, steps) == wrong, (ex.kind, ex.response)
        if ex.kind in ("exploration", "honest-last"):  # a correct step into a dead end under "any"
            assert steps[-1].is_correct and steps[-1].result != puzzle.target, ex.response
        elif ex.kind == "computational":
            assert steps[-1].is_legal and not steps[-1].is_correct, ex.response
        else:
            assert ex.kind == "rule" and verify(puzzle, steps).failure in (Failure.UNKNOWN_NUMBER,
                                                                           Failure.ILLEGAL_OPERATION)


@pytest.mark.parametrize("n_numbers, count, top, targets", [
    (4, 40, 99, (100, 999)), (6, 8, 99, (100, 999)),
    (4, 60, 12, (10, 60)),  # small numbers: a step that leaves some subset able to make the target is common
])
def test_examples_under_any_are_right_and_wrong_under_any(n_numbers, count, top, targets):
    rng = random.Random(1)
    kinds: dict[str, int] = {}
    recipe = Recipe(back_ratio=3.0, honest_last=1.0)
    for puzzle in _any_puzzles(n_numbers, count, top=top, targets=targets):
        exs = examples_for(puzzle, recipe, rng)
        assert exs and exs[0].kind == "op"
        _check_any_examples(puzzle, exs)
        for ex in exs:
            kinds[ex.kind] = kinds.get(ex.kind, 0) + 1
    assert {"op", "computational", "rule", "goal-claim"} <= set(kinds), kinds
    if n_numbers == 4:
        assert kinds.get("exploration", 0) > 0 and kinds.get("honest-last", 0) > 0, kinds


def test_under_any_the_dead_ends_are_those_of_any():
    # 2 * 3 = 6 answers it; with 1000 no expression makes 6, so under "all" it has no answer
    p = Puzzle((2, 3, 1000), 6, "any")
    rng = random.Random(0)
    for _ in range(40):
        exs = examples_for(p, Recipe(kind_weights=(1, 0, 0), back_ratio=2.0, goal_forcing=0.0), rng)
        _check_any_examples(p, exs)
        assert [str(s) for s in _steps(exs[0].response)] == ["3 * 2 = 6"]  # a subset: 1000 stays unused
        for ex in exs[1:]:  # nothing but 3 and 2 make 6: the first step is the only place for an error
            assert ex.kind in ("exploration", "computational", "rule")
            if ex.kind == "exploration":
                assert _steps(ex.response)[-1].result != 6
    # under "all" every step of 2 3 4 1000 -> 24 is a dead end (1000 must be used); under "any" a
    # step is one only when no subset of what it leaves makes 24: 4 * 3 = 12 leaves 12 * 2 = 24
    q = Puzzle((2, 3, 4, 1000), 24, "any")
    chosen = set()
    for _ in range(30):
        for ex in examples_for(q, Recipe(kind_weights=(1, 0, 0), back_ratio=3.0, goal_forcing=0.0), rng):
            steps = _steps(ex.response)
            if ex.kind == "exploration":
                chosen.add(str(steps[-1]))
                assert not is_solvable([m.state for m in replay(q, steps)][-1], 24, "any"), ex.response
    assert chosen and "4 * 3 = 12" not in chosen and "3 * 2 = 6" not in chosen, chosen


def test_a_puzzle_solvable_only_with_a_subset_gets_a_subset_trace():
    p = Puzzle((2, 3, 1000), 6, "any")
    assert not is_solvable(p.numbers, 6, "all")
    (op,) = examples_for(p, Recipe(data="op"), random.Random(0))
    assert op.response == "3 * 2 = 6\n" + GOAL and verify(p, _steps(op.response)).ok
    # 1, 2, 50 -> 100: 50 * 2 = 100 is an answer; a longer walk over all three numbers that makes
    # 100 on the way (50 * 2 = 100, 100 * 1 = 100) stops there
    q = Puzzle((1, 2, 50), 100, "any")
    lengths = set()
    for seed in range(60):
        (ex,) = examples_for(q, Recipe(data="op"), random.Random(seed))
        steps = _steps(ex.response)
        assert verify(q, steps).ok and all(s.result != 100 for s in steps[:-1]), ex.response
        lengths.add(len(steps))
    assert lengths == {1, 2}


def test_given_paths_under_any(tmp_path):
    p = Puzzle((2, 3, 1000), 6, "any")
    rows = [{**p.to_json(), "steps": ["3 * 2 = 6"]},
            {"numbers": [25, 4, 7], "target": 100, "steps": ["25 * 4 = 100"]},  # names no rules
            {"numbers": [25, 4, 7], "target": 107, "rules": "all", "steps": ["25 * 4 = 100", "100 + 7 = 107"]}]
    f = tmp_path / "paths.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    exs, dropped = path_examples(f, recipe=Recipe(back_ratio=2.0), rules="any")
    assert dropped == 1  # the line under rules "all" (this data is "any")
    assert [e.prompt for e in exs if e.kind == "op"] == [prompt(p), prompt(Puzzle((25, 4, 7), 100, "any"))]
    for ex in exs:
        _check_any_examples(Puzzle.from_json(rows[0] if "1000" in ex.prompt else rows[1], "any"), [ex])
    exs, dropped = path_examples(f)  # no rules given: each line's own, else "all" (25 * 4 leaves 7 unused)
    assert dropped == 1 and [e.prompt for e in exs] == [prompt(p), prompt(Puzzle((25, 4, 7), 107))]


# --------------------------------------------------------------------------- sbt train on "any" data


def _any_data(root: Path, rules_in_lines: bool) -> Path:
    d = root / "tv4"
    d.mkdir()
    puzzles = _any_puzzles(4, 34, seed=2)
    splits = {"train": puzzles[:30], "val": puzzles[30:]}
    for split, part in splits.items():
        rows = [p.to_json() if rules_in_lines else {"numbers": list(p.numbers), "target": p.target} for p in part]
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "meta.json").write_text(json.dumps({"generator": "sbt stream-of-search v1", "n_numbers": 4, "seed": 0,
                                             "min_target": 100, "max_target": 999, "rules": "any"}))
    return d


def test_examples_from_a_rules_any_folder_are_built_under_any(tmp_path):
    from training.config import TrainConfig
    from training.sft import _dataset

    d = _any_data(tmp_path, rules_in_lines=False)  # only meta.json says "any"
    tok = build_tokenizer("any")
    cfg = TrainConfig(out=str(tmp_path / "m"), data_dir=str(d), size="tiny")
    data = _dataset(cfg, tok, lambda m: None, save=False)
    assert len(data) >= 30
    mark = tok.convert_tokens_to_ids(" (any)")
    texts = [tok.decode(data.ids[int(a):int(b)].tolist()) for a, b in zip(data.offsets, data.offsets[1:])]
    assert all(" (any)\n###Response:\n" in t for t in texts), texts[0]
    assert int((data.ids == mark).sum()) == len(data)  # one token each


def test_sbt_train_on_rules_any_data_records_rules_any(tmp_path):
    from typer.testing import CliRunner

    from sbt_cli.app import app
    from sbt_core.models import trained_for

    d = _any_data(tmp_path, rules_in_lines=True)
    out = tmp_path / "m"
    r = CliRunner().invoke(app, ["train", "--out", str(out), "--numbers", "4", "--data-dir", str(d), "--size", "tiny",
                                 "--tokens", "3000", "--batch-size", "4", "--eval-every", "1000",
                                 "--eval-puzzles", "2", "--threads", "1"])
    assert r.exit_code == 0, r.output
    saved = json.loads((out / "training.json").read_text())
    assert (saved["n_numbers"], saved["rules"]) == (4, "any")
    assert trained_for(out) == (4, "any")  # what `sbt solve --rules any` picks it for
    from sbt_core.backends.light_tokenizer import LightTokenizer

    tok = LightTokenizer(out)  # the model's own tokenizer spells the mark as one token
    assert len(tok(" (any)")["input_ids"]) == 1 and tok.decode(tok(prompt(Puzzle((1, 2, 3, 4), 100, "any")))
                                                               ["input_ids"]) == prompt(Puzzle((1, 2, 3, 4), 100, "any"))


# --------------------------------------------------------------------------- sbt iterate keeps the rules


def test_iterate_searches_and_keeps_paths_under_the_data_rules(tmp_path):
    from harness.iterate import train_slice, verified_paths

    d = _any_data(tmp_path, rules_in_lines=True)
    rows = train_slice(d, 5, seed=0, round_=1)
    assert len(rows) == 5 and all(r["rules"] == "any" for r in rows)  # the search file's lines say "any"

    class Runs:  # a store holding one search run under rules "any"
        def run(self, run_id):
            return {"id": run_id, "rules": "any"}

        def results(self, run_id):
            return [{"solved": 1, "numbers": "[2, 3, 1000]", "target": 6, "steps": '["3 * 2 = 6"]', "puzzle_index": 0},
                    {"solved": 1, "numbers": "[2, 3, 1000]", "target": 6, "steps": '["3 + 2 = 5"]', "puzzle_index": 1}]

    # 3 * 2 = 6 is an answer under "any" only: kept, and its row says so for training
    assert verified_paths(Runs(), 1) == [{"numbers": [2, 3, 1000], "target": 6, "rules": "any", "steps": ["3 * 2 = 6"],
                                          "puzzle_index": 0}]
