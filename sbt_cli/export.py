"""``sbt export gguf MODEL --quant q8_0``: a GGUF of a model for the llama backend."""

from __future__ import annotations

from typing import Optional

import typer

from sbt_core.errors import SbtError

app = typer.Typer(help="Export a model to other formats (GGUF for llama.cpp).", no_args_is_help=True)


@app.command("gguf")
def gguf(
    model: str = typer.Argument(..., help="model name (in models/) or directory"),
    quant: str = typer.Option("q8_0", "--quant", "-q", help="f32|f16|q8_0|q4_0|q4_k_m"),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="output file (default: MODEL_DIR/model-QUANT.gguf)"),
    allow_fallback: bool = typer.Option(False, "--allow-fallback",
                                        help="let llama.cpp store tensors whose rows do not fit the quant "
                                             "block in a compatible type instead of refusing"),
    threads: int = typer.Option(1, "--threads", help="quantizer threads"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the output file if it exists "
                                   "(else an existing GGUF is refused, left as it is)"),
) -> None:
    """Write a GGUF (llama architecture, our token ids, no llama.cpp vocabulary) for `--backend llama`.

    f32/f16 are written directly; q8_0, q4_0 and q4_k_m are made by llama.cpp's own quantizer (needs llama-cpp-python). Row lengths must be multiples of 32 (q8_0, q4_0) or 256 (q4_k_m)."""  # noqa: E501
    from sbt_core.gguf_export import QUANTS, export_gguf
    from sbt_core.models import resolve_model

    from sbt_core.limits import MAX_THREADS, check_range

    if quant not in QUANTS:
        raise SbtError(f"unknown quant {quant!r}; choose one of: {', '.join(QUANTS)}")
    check_range(threads, "--threads", 1, MAX_THREADS, integer=True)
    path = resolve_model(model)
    written = export_gguf(path, quant, out, allow_fallback=allow_fallback, threads=threads, overwrite=overwrite)
    size = written.stat().st_size
    typer.echo(f"wrote {written} ({quant}, {size / 1e6:.2f} MB)")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="export")
