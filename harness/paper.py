"""The paper's reported numbers (arXiv 2502.04404, Countdown-4), for reference only.

These are Llama-3.2-1B / 3B fine-tuned on the authors' data and judged by the authors'
(more lenient) checker; they are NOT measurements of our models and are always shown
as a separate, labelled block.
"""

from __future__ import annotations

SOURCE = "Yang et al. 2025, 'Step Back to Leap Forward', arXiv 2502.04404, Countdown-4"
COLUMNS = ("1B seen", "1B new", "3B seen", "3B new")

# (label, our method name, params, [1B seen, 1B new, 3B seen, 3B new]) in percent
TABLE: list[tuple[str, str, dict, list[float]]] = [
    ("SFT on optimal paths, greedy", "greedy", {}, [28.60, 28.92, 33.98, 32.68]),
    ("SFT, beam search", "beam", {}, [31.68, 31.90, 35.82, 34.36]),
    ("Best-of-N, N=8", "best-of-n", {"n": 8}, [41.26, 40.68, 47.84, 48.56]),
    ("Best-of-N, N=32", "best-of-n", {"n": 32}, [25.60, 27.04, 44.38, 45.88]),
    ("backtracking data, greedy", "greedy", {}, [28.92, 27.06, 27.56, 26.96]),
    ("self-backtracking b=0, N=8", "self-backtrack", {"n": 8, "b": 0}, [66.66, 67.40, 58.76, 56.92]),
    ("self-backtracking b=1, N=8", "self-backtrack", {"n": 8, "b": 1}, [67.60, 68.02, 61.06, 59.28]),
    ("self-backtracking b=1, N=32", "self-backtrack", {"n": 32, "b": 1}, [73.54, 73.78, 64.12, 61.98]),
]

OTHER_1B = [
    ("DFS with a verifier, 32 nodes", 49.12),
    ("DFS with a verifier, 64 nodes", 60.00),
    ("Stream of Search", 57.5),
    ("guided Stream of Search", 69.0),
]

NOTES = [
    "A public issue reports 56-60% when re-running the authors' recipe, not 73.5%.",
    "Best-of-N gets worse as N grows in the paper; self-backtracking improves with N.",
]


def as_rows() -> list[dict]:
    rows = []
    for label, method, params, values in TABLE:
        rows.append({"label": label, "method": method, "params": params, **dict(zip(COLUMNS, values))})
    return rows
