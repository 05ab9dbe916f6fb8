"""The strict verifier: every failure category, valid answers, and the rules behind them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from sbt_core.countdown import (
    FAILURE_TEXT,
    Failure,
    Puzzle,
    Step,
    apply_op,
    apply_step,
    expression,
    legal_steps,
    parse_step,
    play_step,
    replay,
    state_after,
    verify,
)

P = Puzzle((2, 3, 5), 30)
P4 = Puzzle((44, 19, 35, 2), 64)


def check(puzzle, steps, failure, index=None, fragment=""):
    v = verify(puzzle, steps)
    assert not v.ok and not bool(v)
    assert v.failure is failure, v
    assert v.step_index == index, v
    assert fragment in v.detail, v.detail
    assert FAILURE_TEXT[failure] in v.describe()
    return v


@pytest.mark.parametrize(
    "steps",
    [
        ["2 * 3 = 6", "6 * 5 = 30"],
        ["5 * 3 = 15", "15 * 2 = 30"],
        ["3 * 2 = 6", "5 * 6 = 30"],  # smaller operand first is fine for + and *
        ["2*3=6", "6*5=30"],
        ["  2 * 3 = 6  ", "6 * 5 = 30"],
        [Step(2, "*", 3, 6), Step(6, "*", 5, 30)],
    ],
)
def test_valid_answers(steps):
    v = verify(P, steps)
    assert v.ok and bool(v) and v.failure is None and v.step_index is None
    assert v.describe().startswith("verified")


def test_valid_with_subtraction_division_and_zero():
    assert verify(Puzzle((8, 2, 3), 12), ["8 / 2 = 4", "4 * 3 = 12"]).ok
    assert verify(Puzzle((7, 7, 5), 5), ["7 - 7 = 0", "5 + 0 = 5"]).ok
    assert verify(Puzzle((0, 9, 4), 4), ["0 / 9 = 0", "4 + 0 = 4"]).ok
    assert verify(Puzzle((6, 6), 1), ["6 / 6 = 1"]).ok
    assert verify(Puzzle((6, 6), 0), ["6 - 6 = 0"]).ok


def test_invalid_format():
    check(P, ["2 times 3 is 6", "6 * 5 = 30"], Failure.INVALID_FORMAT, 0, "is not 'a op b = c'")
    check(P, ["2 * 3 = 6", "6 x 5 = 30"], Failure.INVALID_FORMAT, 1)
    check(P, ["2 * 3 = 6", ""], Failure.INVALID_FORMAT, 1)
    check(P, ["2 * 3 = 6", None], Failure.INVALID_FORMAT, 1)
    check(P, ["2 * 3 = 6", "6 * 5 = 30 = 30"], Failure.INVALID_FORMAT, 1)
    check(P, ["2 ^ 3 = 8"], Failure.INVALID_FORMAT, 0)
    check(P, ["-2 + 3 = 1"], Failure.INVALID_FORMAT, 0)  # operands are never negative
    check(P, ["2 * 3 = 6.0"], Failure.INVALID_FORMAT, 0)
    check(P, ["２ * 3 = 6"], Failure.INVALID_FORMAT, 0)  # full-width digit: not the protocol
    check(P, ["Goal Reached!"], Failure.INVALID_FORMAT, 0)


def test_unknown_number():
    check(P, ["2 * 4 = 8"], Failure.UNKNOWN_NUMBER, 0, "4 is not available")
    check(P, ["2 * 3 = 6", "6 * 6 = 36"], Failure.UNKNOWN_NUMBER, 1, "6 is not available")


def test_number_used_twice():
    # 2 appears once in the puzzle: 2 + 2 uses it twice
    check(P, ["2 + 2 = 4"], Failure.UNKNOWN_NUMBER, 0, "2 is not available")
    # 3 was consumed by the first step
    check(P, ["2 * 3 = 6", "3 * 5 = 15"], Failure.UNKNOWN_NUMBER, 1, "3 is not available")
    # a duplicated number may be used as often as it appears
    assert verify(Puzzle((5, 5, 2), 20), ["5 + 5 = 10", "10 * 2 = 20"]).ok
    check(Puzzle((5, 5, 2), 20), ["5 + 5 = 10", "5 * 2 = 10"], Failure.UNKNOWN_NUMBER, 1)


def test_incorrect_result():
    check(P, ["2 * 3 = 7", "7 * 5 = 35"], Failure.INCORRECT_RESULT, 0, "2 * 3 is 6, not 7")
    check(P, ["2 * 3 = 6", "6 * 5 = 31"], Failure.INCORRECT_RESULT, 1, "is 30, not 31")


@pytest.mark.parametrize(
    "puzzle,steps,index",
    [
        (Puzzle((3, 5, 2), 4), ["3 - 5 = -2"], 0),  # negative result
        (Puzzle((3, 5, 2), 4), ["3 - 5 = 2"], 0),  # smaller minus larger, "fixed" sign
        (Puzzle((7, 2, 1), 3), ["7 / 2 = 3"], 0),  # floor division must be rejected
        (Puzzle((7, 2, 1), 4), ["7 / 2 = 3", "3 + 1 = 4"], 0),
        (Puzzle((7, 2, 1), 3), ["7 / 2 = 3.5"], 0),  # (invalid format, see below)
        (Puzzle((7, 0, 1), 7), ["7 / 0 = 0"], 0),  # division by zero
        (Puzzle((0, 0, 1), 1), ["0 / 0 = 0"], 0),
        (Puzzle((0, 0, 1), 1), ["0 / 0 = 1"], 0),
        (Puzzle((8, 2, 6), 2), ["8 + 2 = 10", "6 - 10 = -4"], 1),
    ],
)
def test_illegal_operation(puzzle, steps, index):
    v = verify(puzzle, steps)
    assert not v.ok and v.step_index == index
    if steps[index] == "7 / 2 = 3.5":
        assert v.failure is Failure.INVALID_FORMAT
    else:
        assert v.failure is Failure.ILLEGAL_OPERATION, v
        assert "is not allowed" in v.detail


def test_unused_numbers():
    check(P, ["5 * 3 = 15", "15 + 15 = 30"], Failure.UNKNOWN_NUMBER, 1)
    check(Puzzle((2, 3, 5), 6), ["2 * 3 = 6"], Failure.UNUSED_NUMBERS, None, "left unused: [5, 6]")
    check(Puzzle((10, 20, 30, 40), 30), ["10 + 20 = 30"], Failure.UNUSED_NUMBERS, None)


def test_target_not_reached():
    check(P, ["2 + 3 = 5", "5 + 5 = 10"], Failure.TARGET_NOT_REACHED, None, "ended at 10, target 30")
    check(P, ["2 + 3 = 5"], Failure.TARGET_NOT_REACHED, None, "ended at 5")


def test_no_answer():
    check(P, [], Failure.NO_ANSWER, None, "no steps")
    check(Puzzle((30, 30), 30), [], Failure.NO_ANSWER, None)
    check(P, iter(()), Failure.NO_ANSWER, None)


def test_first_failure_wins_and_later_steps_ignored():
    v = verify(P, ["2 * 3 = 7", "garbage", "9 / 0 = 1"])
    assert v.failure is Failure.INCORRECT_RESULT and v.step_index == 0


def test_every_category_is_described():
    assert set(FAILURE_TEXT) == set(Failure)
    assert {str(f) for f in Failure} == {
        "invalid_format", "unknown_number", "incorrect_result", "illegal_operation",
        "unused_numbers", "target_not_reached", "no_answer",
    }


def test_apply_op_rules():
    assert apply_op(7, "/", 2) is None
    assert apply_op(8, "/", 2) == 4
    assert apply_op(3, "/", 0) is None
    assert apply_op(0, "/", 3) == 0
    assert apply_op(3, "-", 5) is None
    assert apply_op(5, "-", 5) == 0
    assert apply_op(5, "%", 5) is None


def test_apply_step_refuses_bad_steps():
    assert apply_step((2, 3, 5), Step(3, "*", 2, 6)) == (5, 6)
    with pytest.raises(ValueError, match="not available"):
        apply_step((2, 3, 5), Step(4, "+", 2, 6))
    with pytest.raises(ValueError, match="not a correct legal step"):
        apply_step((2, 3, 5), Step(3, "+", 2, 6))
    with pytest.raises(ValueError):
        apply_step((2, 3, 5), Step(3, "-", 5, -2))


def test_replay_plays_each_step_and_stops_at_the_first_wrong_one():
    moves = list(replay(P4, ["44 - 35 = 9", "19 - 9 = 10", "10 * 3 = 30", "30 + 2 = 32"]))
    assert [m.ok for m in moves] == [True, True, False]  # nothing after the first wrong step
    assert moves[0].step == Step(44, "-", 35, 9) and moves[0].state == (2, 9, 19)
    assert moves[1].state == (2, 10)
    assert (moves[2].failure, moves[2].detail) == (Failure.UNKNOWN_NUMBER, "3 is not available")
    assert moves[2].state == (2, 10)  # a wrong step changes nothing
    assert state_after(P4, ["44 - 35 = 9", "19 - 9 = 10"]) == (2, 10)
    assert state_after(P4, ["44 - 35 = 9", "19 - 9 = 11"]) is None
    assert state_after(P4, []) == (2, 19, 35, 44)


@pytest.mark.parametrize("state, line, failure, detail", [
    ((2, 3, 5), "2 3", Failure.INVALID_FORMAT, "'2 3' is not 'a op b = c'"),
    ((2, 3, 5), None, Failure.INVALID_FORMAT, "'None' is not 'a op b = c'"),
    ((2, 3, 5), "3 + 3 = 6", Failure.UNKNOWN_NUMBER, "3 is not available"),
    ((2, 3, 5), "3 - 5 = -2", Failure.ILLEGAL_OPERATION, "3 - 5 is not allowed"),
    ((2, 3, 5), "5 / 2 = 2", Failure.ILLEGAL_OPERATION, "5 / 2 is not allowed"),
    ((2, 3, 5), "5 + 2 = 8", Failure.INCORRECT_RESULT, "5 + 2 is 7, not 8"),
    ([5, 2, 3], Step(5, "+", 2, 7), None, ""),
])
def test_play_step_says_why_with_the_verifier_categories(state, line, failure, detail):
    move = play_step(state, line)
    assert (move.failure, move.detail, move.ok) == (failure, detail, failure is None)
    assert move.state == ((3, 7) if failure is None else (2, 3, 5))
    if failure is not None:  # the verifier reports the same category and words
        v = verify(Puzzle(tuple(state), 10), [line])
        assert (v.failure, v.step_index, v.detail) == (failure, 0, detail)


def test_parse_step_round_trip_large_values():
    # values of accepted 6-number puzzles (each <= 10**6) stay below 10**36
    big = Step(10**18, "*", 10**18, 10**36)
    assert parse_step(str(big)) == big
    assert parse_step(str(Step(10**6, "*", 10**6, 10**12))) == Step(10**6, "*", 10**6, 10**12)
    assert parse_step("1" * 41 + " + 1 = 2") is None  # still bounded


def test_expression():
    assert expression(P, [Step(2, "*", 3, 6), Step(6, "*", 5, 30)]) == "(2 * 3) * 5 = 30"
    assert expression(P4, [Step(44, "-", 35, 9), Step(19, "-", 9, 10), Step(10, "*", 2, 20)]).endswith("= 20")


small = st.integers(0, 30)


@settings(max_examples=200, deadline=None)
@given(st.lists(small, min_size=2, max_size=5), st.data())
def test_random_legal_walk(nums, data):
    """Legal correct walks verify exactly when they end at the target; any edit of a result breaks them."""
    state = tuple(sorted(nums))
    steps = []
    while len(state) > 1:
        moves = legal_steps(state)
        step = data.draw(st.sampled_from(moves))
        assert step.is_legal and step.is_correct and step.a >= 0 and step.b >= 0 and step.result >= 0
        steps.append(step)
        state = apply_step(state, step)
    end = state[0]
    assert verify(Puzzle(tuple(nums), end), [str(s) for s in steps]).ok
    v = verify(Puzzle(tuple(nums), end + 1), [str(s) for s in steps])
    assert v.failure is Failure.TARGET_NOT_REACHED
    i = data.draw(st.integers(0, len(steps) - 1))
    s = steps[i]
    wrong = [*map(str, steps[:i]), f"{s.a} {s.op} {s.b} = {s.result + 1}"]
    assert verify(Puzzle(tuple(nums), end), wrong).failure is Failure.INCORRECT_RESULT
    # a prefix that stops early leaves numbers unused (or misses the target)
    if len(steps) > 1:
        v = verify(Puzzle(tuple(nums), steps[-2].result), [str(x) for x in steps[:-1]])
        assert v.failure is Failure.UNUSED_NUMBERS


@settings(max_examples=200, deadline=None)
@given(st.lists(small, min_size=2, max_size=6), small, st.lists(st.text(max_size=30), max_size=6))
def test_verify_never_raises(nums, target, lines):
    v = verify(Puzzle(tuple(nums), target), lines)
    assert v.ok in (True, False)
    if not v.ok:
        assert v.failure in set(Failure)
        assert isinstance(v.describe(), str)


@settings(max_examples=300, deadline=None)
@given(st.lists(small, min_size=2, max_size=5), small,
       st.lists(st.one_of(st.builds(lambda a, op, b, c: f"{a} {op} {b} = {c}", small, st.sampled_from("+-*/"), small,
                                    st.integers(0, 60)), st.text(max_size=8)), max_size=5))
def test_every_replay_agrees_with_the_verifier(nums, target, lines):
    """One replay decides: the verifier, the solver's first wrong step, the scripted
    model's continuation and the dfs state all see the same first wrong step."""
    from sbt_core.backends.scripted import solver_continuation
    from sbt_core.solver import first_wrong_step, is_solvable
    from sbt_core.trace import BACKTRACK

    puzzle = Puzzle(tuple(nums), target)
    v = verify(puzzle, lines)
    moves = list(replay(puzzle, lines))
    bad = next((i for i, m in enumerate(moves) if not m.ok), None)
    if bad is not None:
        assert (v.failure, v.step_index, v.detail) == (moves[bad].failure, bad, moves[bad].detail)
        assert state_after(puzzle, lines) is None
        assert solver_continuation(puzzle, lines) == BACKTRACK
        assert first_wrong_step(puzzle, lines) <= bad
    else:
        assert v.step_index is None and len(moves) == len(lines)
        end = state_after(puzzle, lines)
        assert end == (moves[-1].state if moves else tuple(sorted(nums)))
        if lines:  # a correct step into a dead end is wrong; the end is solvable iff none is
            assert (first_wrong_step(puzzle, lines) is None) == is_solvable(end, target)
    state = sorted(nums)
    for line, move in zip(lines, moves):  # dfs plays one line at a time on a state
        assert play_step(state, line) == move
        state = list(move.state)
