"""Shared fixtures of the TUI tests: a scripted backend and a recorded event stream.

``TRACE_JSON`` is the event stream of ``self-backtrack`` (N=4, b=1) on ``4 5 3 -> 27``
over ``scripted_backend()``, recorded once and frozen here (wall time fixed) so that the
snapshot tests do not change when a strategy's internals do. It has backtracks in both
rounds, a rollback to the root and one to ``[5 - 3 = 2]``, a wrong "Goal Reached!"
candidate and a verified selected answer.
"""

from __future__ import annotations

import json

from sbt_core.search.events import event_from_json
from sbt_core.trace import BACKTRACK, GOAL

PUZZLE = "4 5 3 -> 27"

SCRIPT = {
    "": [("4 * 5 = 20\n" + BACKTRACK, -0.9), ("4 + 5 = 9\n9 * 3 = 27\n" + GOAL, -0.25),
         ("5 - 3 = 2\n4 * 2 = 8\n" + BACKTRACK, -1.0), ("4 + 3 = 7\n7 * 5 = 35\n" + GOAL, -0.5)],
    "5 - 3 = 2\n": [("2 * 4 = 8\n" + BACKTRACK, -1.2), ("4 + 2 = 6\n" + BACKTRACK, -1.1),
                    ("4 * 2 = 8\n" + BACKTRACK, -0.8), ("2 + 4 = 6\n" + BACKTRACK, -1.3)],
}


def scripted_backend():
    from sbt_core.backends.scripted import ScriptedBackend

    return ScriptedBackend(SCRIPT)


TRACE_JSON = r"""
{"event": "expand", "node": 0, "prefix": [], "n": 4, "round": 0}
{"event": "sample", "node": 0, "index": 0, "text": "4 * 5 = 20\n<backtrack>", "lines": ["4 * 5 = 20"], "ending": "backtrack", "logprob": -0.9, "tokens": 8}
{"event": "step", "node": 0, "index": 0, "line": "4 * 5 = 20", "valid": true}
{"event": "sample", "node": 0, "index": 1, "text": "4 + 5 = 9\n9 * 3 = 27\nGoal Reached!", "lines": ["4 + 5 = 9", "9 * 3 = 27"], "ending": "goal", "logprob": -0.25, "tokens": 14}
{"event": "step", "node": 0, "index": 1, "line": "4 + 5 = 9", "valid": true}
{"event": "step", "node": 0, "index": 1, "line": "9 * 3 = 27", "valid": true}
{"event": "sample", "node": 0, "index": 2, "text": "5 - 3 = 2\n4 * 2 = 8\n<backtrack>", "lines": ["5 - 3 = 2", "4 * 2 = 8"], "ending": "backtrack", "logprob": -1.0, "tokens": 13}
{"event": "step", "node": 0, "index": 2, "line": "5 - 3 = 2", "valid": true}
{"event": "step", "node": 0, "index": 2, "line": "4 * 2 = 8", "valid": true}
{"event": "sample", "node": 0, "index": 3, "text": "4 + 3 = 7\n7 * 5 = 35\nGoal Reached!", "lines": ["4 + 3 = 7", "7 * 5 = 35"], "ending": "goal", "logprob": -0.5, "tokens": 14}
{"event": "step", "node": 0, "index": 3, "line": "4 + 3 = 7", "valid": true}
{"event": "step", "node": 0, "index": 3, "line": "7 * 5 = 35", "valid": true}
{"event": "backtrack", "node": 0, "index": 0, "wrong": "4 * 5 = 20", "prefix": [], "round": 0}
{"event": "candidate", "lines": ["4 + 5 = 9", "9 * 3 = 27"], "score": -0.25, "count": 1}
{"event": "backtrack", "node": 0, "index": 2, "wrong": "4 * 2 = 8", "prefix": ["5 - 3 = 2"], "round": 0}
{"event": "candidate", "lines": ["4 + 3 = 7", "7 * 5 = 35"], "score": -0.5, "count": 1}
{"event": "expand", "node": 1, "prefix": [], "n": 4, "round": 1}
{"event": "expand", "node": 2, "prefix": ["5 - 3 = 2"], "n": 4, "round": 1}
{"event": "sample", "node": 1, "index": 0, "text": "4 * 5 = 20\n<backtrack>", "lines": ["4 * 5 = 20"], "ending": "backtrack", "logprob": -0.9, "tokens": 8}
{"event": "step", "node": 1, "index": 0, "line": "4 * 5 = 20", "valid": true}
{"event": "sample", "node": 1, "index": 1, "text": "4 + 5 = 9\n9 * 3 = 27\nGoal Reached!", "lines": ["4 + 5 = 9", "9 * 3 = 27"], "ending": "goal", "logprob": -0.25, "tokens": 14}
{"event": "step", "node": 1, "index": 1, "line": "4 + 5 = 9", "valid": true}
{"event": "step", "node": 1, "index": 1, "line": "9 * 3 = 27", "valid": true}
{"event": "sample", "node": 1, "index": 2, "text": "5 - 3 = 2\n4 * 2 = 8\n<backtrack>", "lines": ["5 - 3 = 2", "4 * 2 = 8"], "ending": "backtrack", "logprob": -1.0, "tokens": 13}
{"event": "step", "node": 1, "index": 2, "line": "5 - 3 = 2", "valid": true}
{"event": "step", "node": 1, "index": 2, "line": "4 * 2 = 8", "valid": true}
{"event": "sample", "node": 1, "index": 3, "text": "4 + 3 = 7\n7 * 5 = 35\nGoal Reached!", "lines": ["4 + 3 = 7", "7 * 5 = 35"], "ending": "goal", "logprob": -0.5, "tokens": 14}
{"event": "step", "node": 1, "index": 3, "line": "4 + 3 = 7", "valid": true}
{"event": "step", "node": 1, "index": 3, "line": "7 * 5 = 35", "valid": true}
{"event": "sample", "node": 2, "index": 0, "text": "2 * 4 = 8\n<backtrack>", "lines": ["2 * 4 = 8"], "ending": "backtrack", "logprob": -1.2, "tokens": 7}
{"event": "step", "node": 2, "index": 0, "line": "2 * 4 = 8", "valid": true}
{"event": "sample", "node": 2, "index": 1, "text": "4 + 2 = 6\n<backtrack>", "lines": ["4 + 2 = 6"], "ending": "backtrack", "logprob": -1.1, "tokens": 7}
{"event": "step", "node": 2, "index": 1, "line": "4 + 2 = 6", "valid": true}
{"event": "sample", "node": 2, "index": 2, "text": "4 * 2 = 8\n<backtrack>", "lines": ["4 * 2 = 8"], "ending": "backtrack", "logprob": -0.8, "tokens": 7}
{"event": "step", "node": 2, "index": 2, "line": "4 * 2 = 8", "valid": true}
{"event": "sample", "node": 2, "index": 3, "text": "2 + 4 = 6\n<backtrack>", "lines": ["2 + 4 = 6"], "ending": "backtrack", "logprob": -1.3, "tokens": 7}
{"event": "step", "node": 2, "index": 3, "line": "2 + 4 = 6", "valid": true}
{"event": "backtrack", "node": 1, "index": 0, "wrong": "4 * 5 = 20", "prefix": [], "round": 1}
{"event": "candidate", "lines": ["4 + 5 = 9", "9 * 3 = 27"], "score": -0.25, "count": 2}
{"event": "backtrack", "node": 1, "index": 2, "wrong": "4 * 2 = 8", "prefix": ["5 - 3 = 2"], "round": 1}
{"event": "candidate", "lines": ["4 + 3 = 7", "7 * 5 = 35"], "score": -0.5, "count": 2}
{"event": "backtrack", "node": 2, "index": 0, "wrong": "2 * 4 = 8", "prefix": ["5 - 3 = 2"], "round": 1}
{"event": "backtrack", "node": 2, "index": 1, "wrong": "4 + 2 = 6", "prefix": ["5 - 3 = 2"], "round": 1}
{"event": "backtrack", "node": 2, "index": 2, "wrong": "4 * 2 = 8", "prefix": ["5 - 3 = 2"], "round": 1}
{"event": "backtrack", "node": 2, "index": 3, "wrong": "2 + 4 = 6", "prefix": ["5 - 3 = 2"], "round": 1}
{"event": "select", "lines": ["4 + 5 = 9", "9 * 3 = 27"], "score": -0.25, "reason": "highest mean token log-prob among 2 candidate(s), found 2x"}
{"event": "done", "result": {"puzzle": "4 5 3 -> 27", "numbers": [4, 5, 3], "target": 27, "method": "self-backtrack", "params": {"n": 4, "b": 1, "temperature": 0.7, "top_k": 0, "max_new_tokens": 96, "max_states": 0}, "solved": true, "steps": ["4 + 5 = 9", "9 * 3 = 27"], "expression": "(4 + 5) * 3 = 27", "failure": null, "verdict": "verified: every number used once, target reached", "score": -0.25, "stats": {"model_calls": 3, "tokens": 126, "backtracks": 8, "expansions": 3, "candidates": 2, "wall_ms": 12.5}}}
"""


def trace_events():
    return [event_from_json(json.loads(x)) for x in TRACE_JSON.strip().splitlines()]
