"""The benchmark harness: results store (SQLite), bench runner, leaderboard and plots.

Public API (see ``docs/bench.md``):

- ``harness.store.open_store(path=None) -> Store``: open (or create) a results database,
  applying migrations; ``Store.record_iteration(...)`` records one expert-iteration round.
- ``harness.runner.Bench(store, specs, ...).run()``: run a methods x params x models matrix on puzzles.
- ``harness.report.build_report(store, ...)``: the leaderboard data; ``render_*`` /
  ``export`` turn it into rich tables, JSON, CSV or Markdown.
"""
