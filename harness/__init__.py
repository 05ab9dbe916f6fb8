"""The benchmark harness: results store (SQLite), bench runner, leaderboard data.

Public API (see ``docs/bench.md``):

- ``harness.store.open_store(path=None) -> Store``: open (or create) a results database,
  applying migrations; ``Store.record_iteration(...)`` records one expert-iteration round.
- ``harness.runner.Bench(store, specs, ...).run()``: run a methods x params x models matrix on puzzles.
- ``harness.report.build_report(store, ...)``: the leaderboard data; ``export`` turns it
  into JSON, CSV or Markdown (the Rich tables, progress bars and plots are the CLI's:
  ``sbt_cli.views``).
"""
