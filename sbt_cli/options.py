"""Options several commands share, declared once (``typing.Annotated`` aliases for Typer)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from sbt_core.settings import FLAG_HELP

# the backend options (sbt_core.settings.BackendOptions): solve, bench, harvest, tui
Dtype = Annotated[Optional[str], typer.Option("--dtype", help=FLAG_HELP["dtype"])]
Device = Annotated[Optional[str], typer.Option("--device", help=FLAG_HELP["device"])]
Threads = Annotated[Optional[int], typer.Option("--threads", help=FLAG_HELP["threads"])]
Quant = Annotated[Optional[str], typer.Option("--quant", help=FLAG_HELP["quant"])]
