"""sbt core: Countdown rules, the text protocol, data generation and the search engine.

No CLI, no UI and no database code lives here; every front end (``sbt_cli``, ``tui``,
``harness``, ``training``) imports from this package.
"""

__version__ = "0.1.0"
