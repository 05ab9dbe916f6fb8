"""parse_puzzle: what users type is read, everything else is refused with a precise reason."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from sbt_core.countdown import MAX_VALUE, Puzzle, check_puzzle, parse_puzzle
from sbt_core.errors import PuzzleError, SbtError

FAST = settings(max_examples=150, deadline=None)


@pytest.mark.parametrize(
    "text",
    [
        "2 3 5 -> 30",
        "2,3,5->30",
        "[2, 3, 5] -> 30",
        "2 3 5 → 30",
        "2 3 5 => 30",
        "   2    3   5   ->    30   ",
        "2, 3, 5 -> 30",
        "2 ,3 ,5->30",
        "[2,3,5]->30",
        "\t2\t3\t5\t->\t30\t",
        "[ 2 3 5 ] -> 30".replace("[ ", "[").replace(" ]", "]"),
        "002 3 5 -> 30",
        "2 3 5 -> 0000030",
        "00000002 3 5 -> 000000000030",  # leading zeros do not make a number big
        "2\u00a03\u00a05 -> 30",  # no-break spaces are spaces
    ],
)
def test_accepted_forms(text):
    assert parse_puzzle(text) == Puzzle((2, 3, 5), 30)


def test_order_and_duplicates_kept():
    assert parse_puzzle("5 5 2 -> 10").numbers == (5, 5, 2)


def test_bounds_accepted():
    assert parse_puzzle("0 0 -> 0") == Puzzle((0, 0), 0)
    assert parse_puzzle("1 2 3 4 5 6 -> 21").numbers == (1, 2, 3, 4, 5, 6)
    p = parse_puzzle(f"{MAX_VALUE} {MAX_VALUE} -> {MAX_VALUE}")
    assert p.numbers == (MAX_VALUE, MAX_VALUE) and p.target == MAX_VALUE


# (input, a fragment the message must contain) -- one per refused form of issue 2 item 8
REFUSED = [
    ("", "empty puzzle"),
    ("   \t ", "empty puzzle"),
    ("2 3 5", "no arrow"),
    ("2 3 5 30", "no arrow"),
    ("2 3 5 ->", "no target after the arrow"),
    ("2 3 5 ->   ", "no target after the arrow"),
    ("-> 30", "no numbers given"),
    ("two three five -> 30", "'two' is not a whole number (in the numbers)"),
    ("2 3 5 -> thirty", "'thirty' is not a whole number (in the target)"),
    ("2 3.5 -> 30", "'3.5' is not a whole number"),
    ("2 3 0x5 -> 30", "'0x5' is not a whole number"),
    ("2 -3 5 -> 30", "numbers must be non-negative, got -3"),
    ("2 3 5 -> -30", "numbers must be non-negative, got -30"),
    ("-1 2 -> 3", "numbers must be non-negative, got -1"),
    ("5 -> 5", "at least 2 numbers, got 1"),
    ("1 2 3 4 5 6 7 -> 8", "at most 6 numbers, got 7"),
    ("2 3 1000001 -> 30", "at most 1,000,000, got 1000001"),
    ("2 3 99999999999999999999 -> 30", "at most 1,000,000, got 99999999999999999999"),
    ("2 3 5 -> 1000001", "at most 1,000,000, got 1000001"),
    ("2 3 -> 5 -> 30", "more than one arrow"),
    ("2 3 → 5 -> 30", "more than one arrow"),
    ("2 3 5 -> 30 31", "expected one target after the arrow, got '30 31'"),
    ("2 3\x00 5 -> 30", "control character ('\\x00')"),
    ("2 3 5\n-> 30", "control character ('\\n')"),
    ("2 3 5 -> 30\x1b[31m", "control character ('\\x1b')"),
    ("2 3\u200b5 -> 30", "control character ('\\u200b')"),
    ("1" * 1_000_000, "too long (1,000,000 characters; at most 200)"),
    ("2 3 5 -> 30" + " " * 1_000_000, "too long"),
]


@pytest.mark.parametrize("text,fragment", REFUSED, ids=[repr(t[:24]) for t, _ in REFUSED])
def test_refused_forms(text, fragment):
    with pytest.raises(PuzzleError) as info:
        parse_puzzle(text)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message and len(message) < 200  # one short line, even for 1 MB input
    assert isinstance(info.value, SbtError) and info.value.exit_code == 2


def test_not_text_refused():
    with pytest.raises(PuzzleError, match="must be text"):
        parse_puzzle(None)  # type: ignore[arg-type]
    with pytest.raises(PuzzleError, match="must be text"):
        parse_puzzle(b"2 3 -> 5")  # type: ignore[arg-type]


def test_check_puzzle_bounds():
    with pytest.raises(PuzzleError, match="at least 2"):
        check_puzzle(Puzzle((), 3))
    with pytest.raises(PuzzleError, match="non-negative"):
        check_puzzle(Puzzle((1, -1), 3))


numbers = st.lists(st.integers(0, MAX_VALUE), min_size=2, max_size=6)
targets = st.integers(0, MAX_VALUE)
separators = st.sampled_from([" ", ",", ", ", "  ", " , ", "\t"])
arrows = st.sampled_from(["->", " -> ", "→", " → ", "=>", "  ->  "])


@FAST
@given(numbers, targets, separators, arrows, st.booleans())
def test_any_rendering_round_trips(nums, target, sep, arrow, brackets):
    left = sep.join(map(str, nums))
    if brackets:
        left = f"[{left}]"
    p = parse_puzzle(f"{left}{arrow}{target}")
    assert p == Puzzle(tuple(nums), target)
    assert parse_puzzle(str(p)) == p  # str(Puzzle) is itself an accepted form


@FAST
@given(st.text(max_size=300))
def test_arbitrary_text_is_puzzle_or_puzzle_error(text):
    try:
        p = parse_puzzle(text)
    except PuzzleError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert 2 <= len(p.numbers) <= 6
        assert all(0 <= x <= MAX_VALUE for x in (*p.numbers, p.target))


@pytest.mark.parametrize("text,shown", [
    ("2 3 " + "9" * 30 + " -> 30", "got " + "9" * 19 + "…"),
    ("2 3 5 -> " + "12345678901234567890123", "got " + "1234567890123456789…"),
    ("2 3 " + "x" * 30 + " -> 30", repr("x" * 19 + "…") + " is not a whole number"),
    ("2 3 " + "99999999999999999999" + " -> 30", "got 99999999999999999999 "),  # 20 characters: whole
])
def test_cut_input_ends_with_an_ellipsis(text, shown):
    with pytest.raises(PuzzleError) as info:
        parse_puzzle(text + " ")
    assert shown in str(info.value) + " "


def test_cut_step_text_ends_with_an_ellipsis():
    from sbt_core.countdown import verify

    long = "2 + 3 = 5 and then a long tail of words " * 3
    detail = verify(Puzzle((2, 3), 5), [long]).detail
    assert repr(long[:39] + "…") in detail
    assert repr("2 x 3") in verify(Puzzle((2, 3), 5), ["2 x 3"]).detail  # short text: not cut
