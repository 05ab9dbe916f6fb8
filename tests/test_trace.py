"""The text protocol (render / parse round trips, robustness) and the protocol tokenizer."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sbt_core.countdown import Puzzle, Step, legal_steps, apply_step, verify
from sbt_core.solver import random_solution, solve
from sbt_core.trace import (
    BACKTRACK,
    GOAL,
    parse_prompt,
    parse_response,
    prompt,
    render_backtrack,
    render_solution,
    render_steps,
)

SETTINGS = settings(max_examples=150, deadline=None)

P4 = Puzzle((44, 19, 35, 2), 64)


def test_prompt_is_the_papers_format():
    assert prompt(Puzzle((2, 3, 5, 7), 17)) == "###Question: numbers [2, 3, 5, 7]->target 17\n###Response:\n"


def test_solution_and_backtrack_format():
    steps = [Step(2, "*", 3, 6), Step(6, "*", 5, 30)]
    assert render_steps(steps) == "2 * 3 = 6\n6 * 5 = 30\n"
    assert render_solution(steps) == "2 * 3 = 6\n6 * 5 = 30\nGoal Reached!"
    assert render_backtrack(steps[:1], "6 + 5 = 11") == "2 * 3 = 6\n6 + 5 = 11\n<backtrack>"
    assert render_steps([]) == ""


puzzles = st.builds(lambda n, t: Puzzle(tuple(n), t),
                    st.lists(st.integers(0, 10**6), min_size=2, max_size=6), st.integers(0, 10**6))
steps = st.builds(Step, st.integers(0, 10**9), st.sampled_from("+-*/"), st.integers(0, 10**9),
                  st.integers(-(10**12), 10**18))


@SETTINGS
@given(puzzles)
def test_prompt_round_trip(p):
    assert parse_prompt(prompt(p)) == p
    assert parse_prompt(prompt(p) + "5 + 3 = 8\n") == p


@SETTINGS
@given(st.lists(steps, max_size=6))
def test_solution_round_trip(ss):
    r = parse_response(render_solution(ss))
    assert r.steps == ss and r.lines == [str(s) for s in ss]
    assert r.ending == "goal" and r.reached_goal and not r.backtracked and r.well_formed
    assert r.trailing == ""


@SETTINGS
@given(st.lists(steps, max_size=5), steps, st.text(max_size=20))
def test_backtrack_round_trip(prefix, wrong, after):
    r = parse_response(render_backtrack(prefix, wrong) + "\n" + after)
    assert r.steps == [*prefix, wrong] and r.ending == "backtrack" and r.backtracked
    assert r.trailing == after


@SETTINGS
@given(st.lists(steps, max_size=5))
def test_prefix_without_marker(ss):
    r = parse_response(render_steps(ss))
    assert r.steps == ss and r.ending == "none"


def test_parse_response_details():
    r = parse_response("2 * 3 = 6\n\n  6 * 5 = 30  \r\nGoal Reached!\nextra junk\n<backtrack>")
    assert r.steps == [Step(2, "*", 3, 6), Step(6, "*", 5, 30)]
    assert r.ending == "goal" and r.trailing == "extra junk\n<backtrack>"
    r = parse_response("2 * 3 = 6\nsix times five\nGoal Reached!")
    assert r.steps == [Step(2, "*", 3, 6), None] and not r.well_formed
    assert r.lines == ["2 * 3 = 6", "six times five"]
    r = parse_response("")
    assert r.steps == [] and r.ending == "none"
    # the marker must be alone on its line
    assert parse_response("2 * 3 = 6 Goal Reached!").ending == "none"


def test_parsed_response_feeds_the_verifier():
    p = Puzzle((2, 3, 5), 30)
    assert verify(p, parse_response("2 * 3 = 6\n6 * 5 = 30\nGoal Reached!").steps).ok
    assert verify(p, parse_response("2 * 3 = 6\nblah\nGoal Reached!").steps).failure.value == "invalid_format"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet="0123456789 +-*/=\n<>backtrGoalRd!#", max_size=200),
                 st.binary().map(lambda b: b.decode("latin-1"))))
def test_parse_response_never_raises(text):
    r = parse_response(text)
    assert r.ending in ("goal", "backtrack", "none")
    assert len(r.lines) == len(r.steps)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(), st.binary(), st.integers(), st.none()))
def test_parse_prompt_never_raises(text):
    assert parse_prompt(text) is None or isinstance(parse_prompt(text), Puzzle)


def test_parse_response_non_string():
    assert parse_response(None).ending == "none"  # type: ignore[arg-type]
    assert parse_prompt("###Question: numbers [a, b]->target 3\n") is None


# ---- tokenizer ----

@pytest.fixture(scope="module")
def tok():
    pytest.importorskip("transformers")
    from sbt_core.tokenizer import build_tokenizer

    return build_tokenizer()


def _protocol_texts(draw_rng: random.Random, p: Puzzle) -> list[str]:
    texts = [prompt(p)]
    sol = random_solution(p, draw_rng)
    if sol:
        texts.append(prompt(p) + render_solution(sol))
        state = tuple(sorted(p.numbers))
        wrong_moves = legal_steps(state)
        wrong = draw_rng.choice(wrong_moves)
        texts.append(prompt(p) + render_backtrack([], wrong))
        texts.append(render_backtrack(sol[:1], Step(sol[0].a, "-", 10**6, sol[0].a - 10**6)))
    return texts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(1, 99), min_size=3, max_size=6), st.integers(0, 1000), st.integers(0, 2**16))
def test_tokenizer_round_trip(tok, nums, target, seed):
    p = Puzzle(tuple(nums), target)
    for text in _protocol_texts(random.Random(seed), p):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids) == text


def test_tokenizer_pieces_and_length(tok):
    p = Puzzle((44, 19, 35, 2), 64)
    sol = solve(p)
    text = prompt(p) + render_solution(sol)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < 70, len(ids)  # "well under 100 tokens" for Countdown-4
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[0] == "###Question: numbers " and pieces[-1] == GOAL
    assert tok.convert_tokens_to_ids(BACKTRACK) != tok.unk_token_id
    assert len(tok("<backtrack>", add_special_tokens=False)["input_ids"]) == 1
    assert tok.convert_ids_to_tokens(tok("12 + 7 = 19\n", add_special_tokens=False)["input_ids"]) == ["1", "2", " + ", "7", " = ", "1", "9", "\n"]


def test_tokenizer_worst_case_countdown4(tok):
    # longest Countdown-4 text: 2-digit numbers, target 100, big intermediates, then a backtrack
    p = Puzzle((99, 98, 97, 96), 100)
    steps = [Step(99, "*", 98, 9702), Step(9702, "*", 97, 941094), Step(941094, "*", 96, 90345024)]
    text = prompt(p) + render_backtrack(steps[:2], steps[2])
    assert len(tok(text, add_special_tokens=False)["input_ids"]) < 100
