"""Search strategies on the scripted backend: Algorithm 1 pinned exactly, and the others."""

from __future__ import annotations

import json

import pytest

from sbt_core.backends.base import Backend, Completion
from sbt_core.backends.scripted import ScriptedBackend, solver_continuation
from sbt_core.countdown import Failure, Puzzle
from sbt_core.search import METHODS, run_search
from sbt_core.search.events import Backtrack, Candidate, Done, Expand, Sample, Select, StepEvent
from sbt_core.trace import BACKTRACK, GOAL

P = Puzzle((1, 2, 3, 4), 24)
A = ["1 * 2 = 2", "2 * 3 = 6", "6 * 4 = 24"]  # a correct answer
B = ["1 + 2 = 3", "3 * 4 = 12", "12 * 2 = 24"]  # claims the goal but uses 2 twice
C = ["4 - 1 = 3", "3 * 2 = 6", "6 * 3 = 18"]  # claims the goal, ends at 18


def text(lines, end):
    return "".join(f"{x}\n" for x in lines) + end


def tokens(s: str) -> int:
    return len(ScriptedBackend.tokenize(s))


def events_of(method, backend, params=None, seed=0, puzzle=P):
    return list(METHODS[method].run(puzzle, backend, params or {}, seed))


def of(kind, events):
    return [e for e in events if isinstance(e, kind)]


def algorithm1_backend(**kw):
    return ScriptedBackend({
        "": [
            text(["1 + 2 = 3", "3 + 3 = 6"], BACKTRACK),   # -> state [1 + 2 = 3]
            text(["4 - 1 = 3"], BACKTRACK),                # -> the root again
            text(["1 + 2 = 3", "3 * 3 = 9"], BACKTRACK),   # -> [1 + 2 = 3] (duplicate state)
            (text(A, GOAL), -0.5),
        ],
        ("1 + 2 = 3",): [
            (text(B[1:], GOAL), -0.2),
            text(["3 * 4 = 12", "12 + 4 = 16"], BACKTRACK),  # -> [1 + 2 = 3, 3 * 4 = 12]
            BACKTRACK,                                      # at once: drops 1 + 2 = 3 -> root
            text(["3 * 4 = 12"], ""),                       # unfinished (no marker)
        ],
        ("1 + 2 = 3", "3 * 4 = 12"): [(text(["12 * 2 = 24"], GOAL), -0.05)],
    }, logprob=-1.0, **kw)


def test_scripted_backend_is_a_backend():
    assert isinstance(ScriptedBackend(), Backend)


def test_algorithm1_expands_each_distinct_rolled_back_state_once_per_round():
    backend = algorithm1_backend()
    ev = events_of("self-backtrack", backend, {"n": 4, "b": 1})
    expands = of(Expand, ev)
    assert [(e.node, e.prefix, e.n, e.round) for e in expands] == [
        (0, [], 4, 0),
        (1, ["1 + 2 = 3"], 4, 1),  # first seen first; the duplicate state is expanded once
        (2, [], 4, 1),             # the root, rolled back to by "4 - 1 = 3 <backtrack>"
    ]
    # one batched sample call per round (plus one score call for the non-root prefix)
    assert backend.calls == [("sample", [""], 4), ("score", [""], 1), ("sample", ["1 + 2 = 3\n", ""], 4)]
    backs = of(Backtrack, ev)
    assert [(b.node, b.index, b.wrong, b.prefix, b.round) for b in backs] == [
        (0, 0, "3 + 3 = 6", ["1 + 2 = 3"], 0),
        (0, 1, "4 - 1 = 3", [], 0),
        (0, 2, "3 * 3 = 9", ["1 + 2 = 3"], 0),
        (1, 1, "12 + 4 = 16", ["1 + 2 = 3", "3 * 4 = 12"], 1),  # last round: not expanded
        (1, 2, "1 + 2 = 3", [], 1),                               # <backtrack> at once drops a prefix step
        (2, 0, "3 + 3 = 6", ["1 + 2 = 3"], 1),
        (2, 1, "4 - 1 = 3", [], 1),
        (2, 2, "3 * 3 = 9", ["1 + 2 = 3"], 1),
    ]
    assert isinstance(ev[-1], Done) and isinstance(ev[-2], Select)


def test_algorithm1_budget_accounting():
    backend = algorithm1_backend()
    ev = events_of("self-backtrack", backend, {"n": 4, "b": 1})
    stats = ev[-1].result.stats
    samples = of(Sample, ev)
    assert len(samples) == 12
    assert stats.expansions == 3
    assert stats.model_calls == 3  # 2 sample calls + 1 prefix score
    assert stats.backtracks == 8
    assert stats.tokens == sum(s.tokens for s in samples)
    assert stats.candidates == 2  # A (twice) and B
    assert stats.wall_ms >= 0


def test_b_zero_does_not_re_expand_and_b_two_goes_deeper():
    b0 = algorithm1_backend()
    ev = events_of("self-backtrack", b0, {"n": 4, "b": 0})
    assert [c[0] for c in b0.calls] == ["sample"]
    assert ev[-1].result.stats.backtracks == 3 and ev[-1].result.stats.expansions == 1
    b2 = algorithm1_backend()
    ev = events_of("self-backtrack", b2, {"n": 4, "b": 2})
    round2 = [e.prefix for e in of(Expand, ev) if e.round == 2]
    assert round2 == [["1 + 2 = 3", "3 * 4 = 12"], [], ["1 + 2 = 3"]]


def test_algorithm1_selects_highest_mean_logprob_of_the_whole_response():
    ev = events_of("self-backtrack", algorithm1_backend(), {"n": 4, "b": 1})
    cands = {tuple(c.lines): c for c in of(Candidate, ev)}
    # B's response = prefix "1 + 2 = 3\n" (scored at -1.0 per token) + its sample (-0.2 per token)
    k_prefix, k_sample = tokens("1 + 2 = 3\n"), tokens(text(B[1:], GOAL))
    expected_b = (-1.0 * k_prefix - 0.2 * k_sample) / (k_prefix + k_sample)
    assert cands[tuple(B)].score == pytest.approx(expected_b)
    assert cands[tuple(A)].score == pytest.approx(-0.5)
    result = ev[-1].result
    assert expected_b > -0.5  # B: 6 prefix tokens at -1.0 and 16 at -0.2
    assert result.score == pytest.approx(expected_b) and result.lines == B
    assert not result.solved and result.verdict.failure == Failure.UNKNOWN_NUMBER  # B uses 2 twice


def test_selected_candidate_is_judged_by_the_strict_verifier_not_by_goal_reached():
    backend = ScriptedBackend({"": [(text(C, GOAL), -0.1), (text(A, GOAL), -0.9)]})
    result = run_search("self-backtrack", P, backend, {"n": 2, "b": 1})
    assert result.lines == C  # the model's favourite...
    assert not result.solved  # ...is wrong, and we say so
    assert result.verdict.failure == Failure.TARGET_NOT_REACHED


def test_duplicates_are_merged_without_penalty():
    backend = ScriptedBackend({"": [(text(A, GOAL), -0.6), (text(C, GOAL), -0.4), (text(A, GOAL), -0.3)]})
    ev = events_of("self-backtrack", backend, {"n": 3, "b": 0})
    cands = of(Candidate, ev)
    assert [(c.lines, c.count) for c in cands] == [(A, 1), (C, 1), (A, 2)]
    assert cands[-1].score == pytest.approx(-0.3)  # the best score of the duplicates is kept
    result = ev[-1].result
    assert result.lines == A and result.solved and result.stats.candidates == 2


def test_ties_go_to_the_more_frequent_candidate_then_the_first():
    backend = ScriptedBackend({"": [(text(C, GOAL), -0.5), (text(A, GOAL), -0.5), (text(A, GOAL), -0.5)]})
    assert run_search("self-backtrack", P, backend, {"n": 3, "b": 0}).lines == A
    backend = ScriptedBackend({"": [(text(C, GOAL), -0.5), (text(A, GOAL), -0.5)]})
    assert run_search("self-backtrack", P, backend, {"n": 2, "b": 0}).lines == C


def test_max_states_caps_a_round_keeping_the_most_backtracked_states():
    backend = algorithm1_backend()
    ev = events_of("self-backtrack", backend, {"n": 4, "b": 1, "max_states": 1})
    assert [e.prefix for e in of(Expand, ev) if e.round == 1] == [["1 + 2 = 3"]]  # 2 votes vs 1


def test_no_candidate_gives_the_best_attempt_and_its_failure():
    backend = ScriptedBackend({
        "": [text(["1 + 2 = 3", "3 + 3 = 7"], BACKTRACK), ("1 * 2 = 2\n2 * 3 = 6\n", -0.3)],
        ("1 + 2 = 3",): [BACKTRACK],
    })
    result = run_search("self-backtrack", P, backend, {"n": 2, "b": 1})
    assert result.lines == ["1 * 2 = 2", "2 * 3 = 6"]  # unfinished beats backtracked
    assert not result.solved and result.verdict.failure == Failure.TARGET_NOT_REACHED
    nothing = ScriptedBackend({"": [""]})
    result = run_search("self-backtrack", P, nothing, {"n": 2, "b": 1})
    assert result.lines == [] and result.verdict.failure == Failure.NO_ANSWER


def test_event_stream_serialises_and_is_deterministic():
    a = [e.to_json() for e in events_of("self-backtrack", algorithm1_backend(), {"n": 4, "b": 1}, seed=3)]
    b = [e.to_json() for e in events_of("self-backtrack", algorithm1_backend(), {"n": 4, "b": 1}, seed=3)]
    for x in (a, b):
        x[-1]["result"]["stats"].pop("wall_ms")
    assert a == b
    json.dumps(a)
    kinds = {e["event"] for e in a}
    assert {"expand", "sample", "step", "backtrack", "candidate", "select", "done"} <= kinds


def test_step_events_mark_malformed_lines():
    backend = ScriptedBackend({"": ["1 + 2 = 3\nbanana\n" + GOAL]})
    steps = of(StepEvent, events_of("greedy", backend))
    assert [(s.line, s.valid) for s in steps] == [("1 + 2 = 3", True), ("banana", False)]


# -- the other strategies ---------------------------------------------------------------

def test_greedy_takes_the_first_completion_at_temperature_zero():
    backend = ScriptedBackend({"": [text(A, GOAL), text(C, GOAL)]})
    ev = events_of("greedy", backend)
    assert ev[-1].result.lines == A and ev[-1].result.solved
    assert backend.calls == [("sample", [""], 1)]
    assert ev[-1].result.stats.model_calls == 1 and ev[-1].result.stats.tokens == tokens(text(A, GOAL))


def test_beam_picks_the_best_ranked_finished_beam():
    backend = ScriptedBackend({"": [("1 + 2 = 3\n", -0.1), (text(C, GOAL), -0.2), (text(A, GOAL), -0.3)]})
    result = run_search("beam", P, backend, {"width": 3})
    assert result.lines == C and not result.solved  # best finished beam, then verified
    assert backend.calls == [("beam", [""], 3)]


def test_best_of_n_selects_by_mean_logprob_without_re_expanding():
    backend = algorithm1_backend()
    result = run_search("best-of-n", P, backend, {"n": 4, "b": 5})
    assert result.lines == A and result.solved
    assert [c[0] for c in backend.calls] == ["sample"]
    assert "b" not in result.params and result.params["n"] == 4


def test_pass_at_n_is_solved_when_any_sample_verifies():
    backend = ScriptedBackend({"": [(text(C, GOAL), -0.1), (text(A, ""), -2.0)]})
    result = run_search("pass@n", P, backend, {"n": 2})
    assert result.solved and result.lines == A  # even without Goal Reached!
    assert METHODS["pass@n"].oracle
    none = run_search("pass@n", P, ScriptedBackend({"": [text(C, GOAL)]}), {"n": 3})
    assert not none.solved and none.lines == C


def test_dfs_follows_verified_steps_and_backtracks_from_dead_ends():
    backend = ScriptedBackend({
        "": [("4 + 3 = 7\n", -0.1), ("9 * 9 = 81\n", -0.01), ("1 * 2 = 2\n", -0.5)],
        ("4 + 3 = 7",): [("7 * 2 = 14\n", -0.1)],
        ("4 + 3 = 7", "7 * 2 = 14"): [("14 + 1 = 15\n", -0.1), ("14 - 1 = 13\n", -0.2)],
        ("1 * 2 = 2",): [("2 * 3 = 6\n", -0.1)],
        ("1 * 2 = 2", "2 * 3 = 6"): [("6 * 4 = 24\n", -0.1)],
    })
    ev = events_of("dfs", backend, {"n": 3})
    result = ev[-1].result
    assert result.solved and result.lines == A
    assert [e.prefix for e in of(Expand, ev)] == [[], ["4 + 3 = 7"], ["4 + 3 = 7", "7 * 2 = 14"],
                                                  ["1 * 2 = 2"], ["1 * 2 = 2", "2 * 3 = 6"]]
    assert [b.wrong for b in of(Backtrack, ev)] == ["14 + 1 = 15", "14 - 1 = 13", "7 * 2 = 14", "4 + 3 = 7"]
    assert result.stats.expansions == 5 and result.stats.backtracks == 4


def test_dfs_respects_its_node_budget():
    backend = ScriptedBackend({"": [("4 + 3 = 7\n", -0.1)], ("4 + 3 = 7",): [("7 * 2 = 14\n", -0.1)]},
                              default="1 + 1 = 5\n")
    result = run_search("dfs", P, backend, {"n": 1, "nodes": 2})
    assert result.stats.expansions == 2 and not result.solved
    assert result.lines == ["4 + 3 = 7", "7 * 2 = 14"]  # the deepest path, and why it fails
    assert result.verdict.failure == Failure.TARGET_NOT_REACHED


@pytest.mark.parametrize("method", [m for m, spec in METHODS.items() if spec.needs_model])
def test_every_model_method_solves_with_a_perfect_model(method):
    backend = ScriptedBackend(default=solver_continuation)
    result = run_search(method, Puzzle((3, 4, 5, 7), 41), backend, {"n": 2})
    assert result.solved and result.method == method
    assert result.to_json()["expression"]


def test_model_methods_need_a_backend_and_sane_params():
    from sbt_core.errors import SbtError

    with pytest.raises(ValueError):
        run_search("greedy", P, None)
    backend = ScriptedBackend(default=solver_continuation)
    for bad in ({"n": 0}, {"b": -1}, {"temperature": -0.5}, {"n": "many"}):
        with pytest.raises(SbtError):
            run_search("self-backtrack", P, backend, bad)
    assert run_search("self-backtrack", P, backend, {"n": "2", "unknown": 1}).params["n"] == 2


# -- the scripted backend itself ----------------------------------------------------------

def test_scripted_backend_truncation_stop_and_defaults():
    backend = ScriptedBackend({"": [text(A, GOAL)]}, logprob=-0.25)
    (c,), = backend.sample(["x###Response:\n"], 1, 0.7, 5, seed=0)
    assert c.finish == "length" and c.n_tokens == 5 and c.text == "1 * 2 = 2"
    (c,), = backend.sample(["###Response:\n"], 1, 0.7, 99, seed=0, stop_at_line=True)
    assert c.text == "1 * 2 = 2\n" and c.finish == "stop" and c.mean_logprob == -0.25
    with pytest.raises(KeyError):
        backend.sample(["###Response:\n9 + 9 = 18\n"], 1, 0.7, 9, seed=0)
    with pytest.raises(ValueError):
        ScriptedBackend({"": [("1 + 1 = 2\n", [-0.1])]})
    assert isinstance(backend.sample(["###Response:\n"], 2, 0.7, 99, 1)[0][1], Completion)
    eos = ScriptedBackend({"": ["1 + 1 = 2"]}).sample([""], 1, 0.5, 99, 0)[0][0]
    assert eos.finish == "eos" and eos.token_ids[-1] == 0


# --- the authors' variant (sbt_core.search.self_backtrack, variant="authors") -------------

def test_authors_variant_caps_a_round_at_sqrt_n_new_states_and_skips_visited_ones():
    # n=4: at most isqrt(4) = 2 new states a round; the root and a state already queued are skipped
    ev = events_of("self-backtrack", algorithm1_backend(), {"n": 4, "b": 2, "variant": "authors"})
    rounds = [(e.round, e.prefix) for e in of(Expand, ev)]
    assert rounds == [(0, []), (1, ["1 + 2 = 3"]), (2, ["1 + 2 = 3", "3 * 4 = 12"])]
    # all-states (the default) re-expands the root and [1 + 2 = 3] again in round 2
    ev = events_of("self-backtrack", algorithm1_backend(), {"n": 4, "b": 2})
    assert [e.prefix for e in of(Expand, ev) if e.round == 2] == [["1 + 2 = 3", "3 * 4 = 12"], [], ["1 + 2 = 3"]]
    # n=1: one state a round, the first rolled back in sample order
    backend = ScriptedBackend({"": [text(["1 + 2 = 3", "3 + 3 = 6"], BACKTRACK)],
                               ("1 + 2 = 3",): [text(["3 * 4 = 12", "12 + 4 = 16"], BACKTRACK)],
                               ("1 + 2 = 3", "3 * 4 = 12"): [text(["12 * 2 = 24"], GOAL)]})
    ev = events_of("self-backtrack", backend, {"n": 1, "b": 3, "variant": "authors"})
    assert [e.prefix for e in of(Expand, ev)] == [[], ["1 + 2 = 3"], ["1 + 2 = 3", "3 * 4 = 12"]]


def test_authors_variant_sums_the_scores_of_duplicate_answers():
    backend = ScriptedBackend({"": [(text(A, GOAL), -0.6), (text(C, GOAL), -0.4), (text(A, GOAL), -0.3)]})
    ev = events_of("self-backtrack", backend, {"n": 3, "b": 0, "variant": "authors"})
    cands = of(Candidate, ev)
    assert [(c.lines, c.count) for c in cands] == [(A, 1), (C, 1), (A, 2)]
    assert cands[-1].score == pytest.approx(-0.9)  # -0.6 + -0.3: a repeated answer ranks lower
    result = ev[-1].result
    assert result.lines == C and not result.solved  # the default variant picks A (test above)
    assert result.params["variant"] == "authors"


def test_variant_is_recorded_only_when_not_the_default_and_checked():
    from sbt_core.errors import SbtError
    from sbt_core.search import method_params
    from sbt_core.search.self_backtrack import SelfBacktrackParams

    assert "variant" not in method_params("self-backtrack")  # stored runs keep their identity
    assert method_params("self-backtrack", {"variant": "authors"})["variant"] == "authors"
    assert SelfBacktrackParams.layered({"variant": "authors", "n": "8"}) == SelfBacktrackParams(n=8, variant="authors")
    with pytest.raises(SbtError, match=r"^--param variant must be one of all-states, authors, got 'sqrt'$"):
        method_params("self-backtrack", {"variant": "sqrt"}, names=["--param {key}"])
    assert "variant" not in method_params("best-of-n", {"variant": "authors"})  # best-of-n does not take it


def test_best_of_n_is_self_backtracking_with_b_zero_under_its_own_name_and_params():
    plain = ScriptedBackend({"": [(text(A, GOAL), -0.6), (text(C, GOAL), -0.4), (text(A, GOAL), -0.3)]})
    sb = events_of("self-backtrack", plain, {"n": 3, "b": 0})[-1].result
    again = ScriptedBackend({"": [(text(A, GOAL), -0.6), (text(C, GOAL), -0.4), (text(A, GOAL), -0.3)]})
    bon = events_of("best-of-n", again, {"n": 3, "b": 5, "max_states": 2})[-1].result  # b, max_states: not its own
    assert (bon.lines, bon.score, bon.stats.candidates) == (sb.lines, sb.score, sb.stats.candidates)
    assert bon.method == "best-of-n" and sb.method == "self-backtrack"
    assert bon.params == {"n": 3, "temperature": 0.7, "top_k": 0, "max_new_tokens": 96}
    assert [c[0] for c in again.calls] == ["sample"]
