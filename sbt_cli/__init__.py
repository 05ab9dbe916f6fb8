"""The ``sbt`` command line: thin Typer commands over the core."""
