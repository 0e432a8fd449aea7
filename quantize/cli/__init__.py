"""`edge-quantize`: thin typer commands over quantize.convert, quantize.eval and quantize.unpack.

Errors are printed as one line and mapped to exit codes by edge.errors.report_and_exit
(2 bad input, 3 not found, 4 bad model file, 6 output exists, 130 Ctrl-C).

`convert` with more than one type, and `eval`, measure every variant against the most precise one
and write `<name>-report.md` / `<name>-report.json` next to the outputs (quantize.eval.report).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from edge.errors import BadRequestError, report_and_exit
from quantize.progress import console

# which code wrote an ONNX folder (quantize.convert.ConvertResult.exporter); GGUF rows leave it empty
EXPORTERS = {"edge": "edge graph builder", "optimum": "optimum"}
_TEXT_HELP = "Debian's GPL-3 licence text, else a licence text shipped by an installed package"

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Convert Hugging Face checkpoints to GGUF at selectable bit widths.",
)


@app.command()
def convert(
    src: Path = typer.Argument(..., help="Hugging Face checkpoint folder or a .gguf file (requantized)."),
    to: str = typer.Option(
        ...,
        "--to",
        "-t",
        help="Comma list of types, e.g. f16,q8_0,q4_k_m (gguf: prefix ok), onnx:fp32,onnx:fp16,onnx:int8,onnx:int4 "
        "(int8/int4 options: _bs16/32/64 (int4 also 128), _asym, _acc0-4; int4 also _head4, _rtn, _awq, _gptq).",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output folder; files are <name>-<type>.gguf, ONNX folders <name>-onnx-<type>/."
    ),
    name: str | None = typer.Option(None, help="Base name of the outputs (default: source name)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or summary."),
    keep_intermediate: bool = typer.Option(False, help="Keep the high-precision intermediate GGUF."),
    eval_text: Path | None = typer.Option(None, help=f"Text for the quality report (default: {_TEXT_HELP})."),
    eval_ctx: int = typer.Option(512, help="Tokens per evaluation chunk (llama.cpp's tables use 512)."),
    imatrix_text: Path | None = typer.Option(
        None,
        help="Compute an importance matrix on this text and quantize with it (unlocks IQ2_XXS, IQ2_XS, IQ3_XXS, ...).",
    ),
    calib_text: Path | None = typer.Option(
        None,
        help="Text whose activations calibrated ONNX types (onnx:int4_awq) are fitted to; chunked as --imatrix-text.",
    ),
    no_eval: bool = typer.Option(False, "--no-eval", help="Skip the quality report."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the planned outputs and sizes; write nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead of the tables."),
) -> None:
    """Convert SRC to one GGUF file per requested type; with several types, measure them (report)."""
    from quantize.convert import ImatrixOptions
    from quantize.convert import convert as run
    from quantize.onnx.calib import CalibOptions
    from quantize.outputs import default_name
    from quantize.outputs import dry_run as plan

    if dry_run:
        return _print_plan(plan(src, to, out, name=name, imatrix=imatrix_text is not None), as_json)
    name = name or default_name(src)
    n_types = len([t for t in to.split(",") if t.strip()])
    box: dict = {}
    hook = None if no_eval or n_types < 2 else _ladder_hook(name, out, src, eval_text, eval_ctx, box)
    imatrix = ImatrixOptions(imatrix_text, eval_ctx) if imatrix_text else None
    calib = CalibOptions(calib_text, eval_ctx) if calib_text else None
    results = run(
        src,
        to,
        out,
        force=force,
        quiet=quiet or as_json,
        keep_intermediate=keep_intermediate,
        name=name,
        imatrix=imatrix,
        calib=calib,
        after=hook,
    )
    if not quiet and not as_json:
        table = Table(title="edge-quantize")
        for col in ("type", "file", "size", "bits/weight", "seconds", "exporter"):
            table.add_column(col, justify="left" if col in ("type", "file", "exporter") else "right")
        for r in results:
            table.add_row(
                r.type,
                str(r.path),
                _size(r.size_bytes),
                f"{r.bits_per_weight:.2f}",
                f"{r.seconds:.1f}",
                EXPORTERS.get(r.exporter, r.exporter),
            )
        console.print(table)
    if "report" in box:
        _emit_report(box["report"], out, name, quiet, as_json)


@app.command("eval")
def eval_(
    reference: Path = typer.Argument(
        ..., help="The most precise file (F32/F16/BF16 GGUF): what the others are compared with."
    ),
    variants: list[Path] = typer.Argument(..., help="Quantized files of the same model."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder for the report (default: the first variant's)."),
    name: str | None = typer.Option(None, help="Base name of the report files (default: the reference's)."),
    eval_text: Path | None = typer.Option(None, help=f"Text to measure on (default: {_TEXT_HELP})."),
    eval_ctx: int = typer.Option(512, help="Tokens per evaluation chunk (llama.cpp's tables use 512)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or table."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead of the table."),
) -> None:
    """Measure quantized variants against a reference: KL divergence, perplexity, top token, speed."""
    from quantize.eval.ladder import EvalConfig, artifact_for, run_ladder
    from quantize.outputs import default_name
    from quantize.progress import Bars, llama_log_to

    folder = out or variants[0].parent
    name = name or default_name(reference)
    arts = [artifact_for(p) for p in variants]
    ref = artifact_for(reference)
    with Bars(quiet or as_json) as bars, llama_log_to(bars, None):
        data = run_ladder(
            name,
            folder,
            ref,
            arts,
            _text(eval_text),
            EvalConfig(ctx=eval_ctx),
            source=str(reference),
            source_type=ref.type,
            progress=_progress(bars),
        )
    _emit_report(data, folder, name, quiet, as_json)


def _text(path: Path | None):
    from quantize.eval.text import EvalText, default_eval_text

    return EvalText.from_file(path, "--eval-text") if path else default_eval_text()


def _progress(bars):
    tasks: dict = {}

    def update(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = bars.add(f"eval {what}", total=total)
        bars.update(tasks[what], completed=done)

    return update


def _ladder_hook(name, out, src, eval_text, eval_ctx, box):
    from quantize.eval.ladder import EvalConfig, ladder_hook

    return ladder_hook(name, out, src, _text(eval_text), EvalConfig(ctx=eval_ctx), box, progress_for=_progress)


def _emit_report(data: dict, folder: Path, name: str, quiet: bool, as_json: bool) -> None:
    import json

    from quantize.eval.report import print_table, write_report

    md, js = write_report(data, folder, name)
    if as_json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    elif not quiet:
        print_table(data, console)
        console.print(f"report: {md} and {js}")


def _print_plan(planned, as_json: bool) -> None:
    import json

    if as_json:
        print(
            json.dumps(
                [
                    {"type": p.type, "kind": p.kind, "path": str(p.path), "predicted_bytes": p.predicted_bytes}
                    for p in planned
                ],
                indent=2,
            )
        )
        return
    table = Table(title="edge-quantize --dry-run (nothing written)")
    for col in ("type", "kind", "path", "predicted size"):
        table.add_column(col, justify="right" if col == "predicted size" else "left")
    for p in planned:
        path = f"{p.path}/" if p.kind == "onnx" else str(p.path)
        table.add_row(p.type, p.kind, path, "-" if p.predicted_bytes is None else _size(p.predicted_bytes))
    console.print(table)


@app.command()
def unpack(
    model: Path = typer.Argument(..., help="GGUF file to turn back into a Hugging Face checkpoint."),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint folder to create."),
    force: bool = typer.Option(False, "--force", help="Replace an existing folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Write a Hugging Face checkpoint (safetensors, config.json, tokenizer) from a GGUF file."""
    from quantize.unpack import unpack as run

    path = run(model, out, force=force, quiet=quiet)
    if not quiet:
        console.print(f"wrote {path}")


@app.command()
def adapter(
    peft_dir: Path = typer.Argument(
        ...,
        help="PEFT LoRA folder (adapter_config.json, adapter_model.safetensors); with --install also a GGUF adapter.",
    ),
    base: Path = typer.Option(..., "--base", help="The base model: Hugging Face folder or GGUF file."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="GGUF adapter file to write (with --merge: output folder)."
    ),
    install: str | None = typer.Option(
        None,
        "--install",
        help="Instead of -o: validate, then put it in $EDGE_HOME/adapters as NAME (served as base+NAME).",
    ),
    out_type: str = typer.Option(
        "f32", "--type", "-t", help="LoRA tensors: f32, f16, bf16. With --merge: any convert type list (q4_k_m,q8_0)."
    ),
    merge: bool = typer.Option(False, "--merge", help="Write the base model with the adapter merged instead."),
    name: str | None = typer.Option(None, help="With --merge: base name of the outputs."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary line."),
) -> None:
    """Convert a PEFT LoRA adapter to a GGUF adapter for llama.cpp, checked against its base model."""
    from quantize.adapter import convert_adapter, merge_adapter

    if (out is None) == (install is None) or (merge and install is not None):
        raise BadRequestError("give either -o OUT or --install NAME (--merge writes to -o)")
    if install is not None:
        from quantize.adapter_install import install_adapter

        i = install_adapter(peft_dir, base, install, out_type=out_type, force=force)
        if not quiet:
            console.print(f"installed {i.path} ({i.architecture}, rank {i.rank}, alpha {i.alpha:g})")
        return
    assert out is not None
    if merge:
        for m in merge_adapter(peft_dir, base, out_type, out, name=name, force=force, quiet=True):
            if not quiet:
                console.print(f"wrote {m.path} ({m.type}, {_size(m.size_bytes)})")
        return
    r = convert_adapter(peft_dir, base, out, out_type=out_type, force=force)
    if not quiet:
        console.print(f"wrote {r.path}: {r.tensors} tensors, rank {r.rank}, alpha {r.alpha:g} ({r.seconds:.1f} s)")


from quantize.cli.plan import plan_command  # noqa: E402 - `edge-quantize plan`: memory/speed per type on a profile

app.command("plan")(plan_command)


def _size(n_bytes: int) -> str:
    n = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def main(argv: list[str] | None = None) -> None:
    try:
        rc = app(args=argv, standalone_mode=False)  # returns click's exit code for --help
    except SystemExit:
        raise
    except BaseException as exc:
        if isinstance(exc, typer.Abort):  # click's Ctrl-C
            report_and_exit(KeyboardInterrupt())
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # a usage error (typer vendors click)
            exc.show()
            raise SystemExit(exc.exit_code) from None
        report_and_exit(exc)
    raise SystemExit(rc if isinstance(rc, int) else 0)
