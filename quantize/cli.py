"""`edge-quantize`: thin typer commands over quantize.convert and quantize.unpack.

Errors are printed as one line and mapped to exit codes by edge.errors.report_and_exit
(2 bad input, 3 not found, 4 bad model file, 6 output exists, 130 Ctrl-C).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from edge.errors import report_and_exit

from .progress import console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Convert Hugging Face checkpoints to GGUF at selectable bit widths.")


@app.command()
def convert(
    src: Path = typer.Argument(..., help="Hugging Face checkpoint folder or a .gguf file (requantized)."),
    to: str = typer.Option(..., "--to", "-t", help="Comma list of types, e.g. f16,q8_0,q4_k_m (gguf: prefix ok)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder; files are <name>-<type>.gguf."),
    name: Optional[str] = typer.Option(None, help="Base name of the outputs (default: source name)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or summary."),
    keep_intermediate: bool = typer.Option(False, help="Keep the high-precision intermediate GGUF."),
) -> None:
    """Convert SRC to one GGUF file per requested type."""
    from .convert import convert as run

    results = run(src, to, out, force=force, quiet=quiet, keep_intermediate=keep_intermediate, name=name)
    if not quiet:
        table = Table(title="edge-quantize")
        for col in ("type", "file", "size", "bits/weight", "seconds"):
            table.add_column(col, justify="left" if col in ("type", "file") else "right")
        for r in results:
            table.add_row(r.type, str(r.path), _size(r.size_bytes), f"{r.bits_per_weight:.2f}", f"{r.seconds:.1f}")
        console.print(table)


@app.command()
def unpack(
    model: Path = typer.Argument(..., help="GGUF file to turn back into a Hugging Face checkpoint."),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint folder to create."),
    force: bool = typer.Option(False, "--force", help="Replace an existing folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Write a Hugging Face checkpoint (safetensors, config.json, tokenizer) from a GGUF file."""
    from .unpack import unpack as run

    path = run(model, out, force=force, quiet=quiet)
    if not quiet:
        console.print(f"wrote {path}")


from .plan_cli import plan_command  # noqa: E402 - `edge-quantize plan`: memory/speed per type on a profile

app.command("plan")(plan_command)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def main(argv: list[str] | None = None) -> None:
    try:
        rc = app(args=argv, standalone_mode=False)   # returns click's exit code for --help
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the one place errors become exit codes
        if isinstance(exc, typer.Abort):               # click's Ctrl-C
            report_and_exit(KeyboardInterrupt())
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):   # a usage error (typer vendors click)
            exc.show()
            raise SystemExit(exc.exit_code)
        report_and_exit(exc)
    raise SystemExit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
