"""The `sbt tui` Textual app: watch a self-backtracking search think.

``tui.app.SbtApp`` is the app; ``tui.state`` is its pure view model of the search event
stream; ``tui.sources`` holds the event sources (live search, stored traces, splits);
``tui.demo`` the self-backtracking search over a simulated model, for use without one.
"""
