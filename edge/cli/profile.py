"""`edge profile [--json]`: what was detected on this device and why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from profiles.detect import Detection, detect

if TYPE_CHECKING:  # rich is imported when a table is printed, not on `edge serve`'s start
    from rich.console import Console


def profile_command(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    root: Path = typer.Option(Path("/"), "--root", hidden=True, help="Read a recorded device tree (tests)."),
) -> None:
    """Show the hardware profile detected on this device, the memory budget and thread count, and why."""
    found = detect(root)
    if as_json:
        typer.echo(json.dumps(found.to_dict(), indent=2))
    else:
        print_detection(found)


def print_detection(found: Detection, console: Console | None = None) -> None:
    if console is None:
        from rich.console import Console

        console = Console()
    p = found.profile
    console.print(f"[bold]{p.name}[/]: {p.description}")
    console.print(
        f"  budget {found.budget_bytes / 1024**3:.2f} GiB, threads {found.threads}, "
        f"context up to {p.runtime.context}, {p.runtime.parallel} slot(s), types {', '.join(p.runtime.quant_types)}"
    )
    console.print(
        f"  bandwidth {p.memory.bandwidth_gbs:g} GB/s, GPU {p.gpu.kind}"
        + (f" ({p.gpu.n_gpu_layers} layers)" if p.gpu.kind != "none" else "")
    )
    if p.gpu.note:
        console.print(f"  note: {p.gpu.note}")
    console.print(f'  build: CMAKE_ARGS="{p.build.cmake_args}" pip install llama-cpp-python')
    console.print(f"  onnxruntime: {p.build.onnx_provider}")
    console.print("why:")
    for reason in found.reasons:
        console.print(f"  - {reason}")
