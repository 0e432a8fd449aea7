"""`edge-quantize plan SRC --profile NAME [--ctx N] [--json]`: thin command over profiles.plan.planner.

Registered in quantize/cli/__init__.py with `app.command("plan")(plan_command)`.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from profiles import calibration
from profiles.plan.planner import Plan, SpeedModel, plan
from profiles.plan.shape import read_model_shape
from profiles.profile import GIB, get_profile


def plan_command(
    src: Path = typer.Argument(..., help="A .gguf file, or a Hugging Face folder (only config.json is read)."),
    profile: str = typer.Option(
        ..., "--profile", "-p", help="Hardware profile name (see `edge profile`) or .toml path."
    ),
    ctx: int | None = typer.Option(None, "--ctx", min=256, help="Context length; default: the largest that fits."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Predict file size, memory and speed per quantization type on a device, and recommend one.

    Speeds come from this device's `edge bench` calibration for the profile when there is one;
    without it they are upper bounds from the profile's nominal bandwidth."""
    chosen = get_profile(profile)
    speed_model = SpeedModel.for_profile(calibration.load(), chosen.name)
    result = plan(read_model_shape(src), chosen, n_ctx=ctx, speed_model=speed_model)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        print_plan(result)


def print_plan(result: Plan, console: Console | None = None) -> None:
    console = console or Console()
    rec = result.recommended
    table = Table(title=f"{Path(result.source).name} on {result.profile}, ctx {rec.n_ctx}")
    speed_col = "tokens/s (at most)" if result.speed_upper_bound else "tokens/s"
    for col in ("type", "file GiB", "memory GiB", "KV GiB", speed_col, "fits"):
        table.add_column(col, justify="left" if col == "type" else "right")
    for e in result.estimates:
        mark = "*" if e.type == rec.type else ""
        table.add_row(
            e.type + mark,
            f"{e.file_bytes / GIB:.2f}",
            f"{e.memory_bytes / GIB:.2f}",
            f"{e.kv_bytes / GIB:.2f}",
            f"{e.tokens_per_s:.1f}" + {"measured": " (measured)", "estimated": ""}.get(e.speed_basis, ""),
            "yes" if e.fits else "no",
        )
    console.print(table)
    console.print(f"budget {result.budget_bytes / GIB:.2f} GiB; recommended: [bold]{rec.type}[/] at --ctx {rec.n_ctx}")
    for reason in result.reasons:
        console.print(f"  {reason}")
