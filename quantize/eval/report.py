"""The quantization ladder report: a rich table, and a model card in Markdown + JSON next to the outputs.

One row per variant (a GGUF file or an ONNX folder: `format` says which), all measured
against the same reference. The JSON validates against report.schema.json (beside this file) and
lists the sha256 of every artifact, so a machine can check the files it describes.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from edge.formats.onnx import MANIFEST
from edge.fsio import sha256_file, write_atomic

SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
SCHEMA_ID = "edge-llm/quant-report/1"
_FIGURES = ("kld_mean", "kld_p99", "ppl", "ppl_delta_pct", "same_top_pct")


@dataclass
class Row:
    """One variant (or the reference) as the report shows it."""

    format: str  # "gguf" | "onnx"
    type: str  # "Q4_K_M", "F32", "int4", ...
    path: Path
    size_bytes: int
    bits_per_weight: float | None
    figures: dict  # metrics.Stats.summary() + prompt_tps/gen_tps
    imatrix: bool = False
    without_imatrix: dict | None = None  # the same type quantized without the imatrix (figures only)
    fits: list[str] | None = None  # hardware profiles it fits (None: not computed)
    kept: bool = True  # False: a temporary file, removed after the evaluation
    fallbacks: tuple = ()  # progress.Fallback: tensors llama.cpp stored in another type
    sha256: str = ""

    def __post_init__(self):
        if not self.sha256 and self.path.is_file():
            self.sha256 = sha256_file(self.path)
        elif not self.sha256 and (self.path / MANIFEST).is_file():  # an ONNX folder: its manifest holds
            self.sha256 = sha256_file(self.path / MANIFEST)  # the sha256 of every file in it

    def to_json(self, folder: Path) -> dict:
        f = self.figures
        out = {
            "format": self.format,
            "type": self.type,
            "file": _rel(self.path, folder),
            "kept": self.kept,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "bits_per_weight": _round(self.bits_per_weight, 3),
            "imatrix": self.imatrix,
            "prompt_tps": _round(f.get("prompt_tps"), 1),
            "gen_tps": _round(f.get("gen_tps"), 1),
            "fits": self.fits,
            "fallbacks": [fb.to_json() for fb in self.fallbacks],
        }
        out.update({k: _round(f.get(k), 6) for k in _FIGURES})
        out["without_imatrix"] = (
            {k: _round(self.without_imatrix.get(k), 6) for k in _FIGURES} if self.without_imatrix else None
        )
        return out


@dataclass
class Report:
    name: str
    folder: Path  # where the outputs (and the report) are
    reference: Row
    variants: list[Row]
    text: Any  # text.EvalText
    ctx: int
    chunks: int
    tokens_scored: int
    source: str = ""
    source_type: str | None = None  # the source's own type when it is a GGUF file
    notes: list[str] = field(default_factory=list)
    text_chain: str = ""  # where the default evaluation text is looked for (text.DEFAULT_TEXT_CHAIN)

    def to_json(self) -> dict:
        rows = [self.reference, *self.variants]
        return {
            "schema": SCHEMA_ID,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "name": self.name,
            "source": {
                "path": self.source,
                "type": self.source_type,
                "already_quantized": _is_quantized(self.source_type),
            },
            "machine": {
                "system": platform.system(),
                "machine": platform.machine(),
                "processor": platform.processor() or platform.machine(),
                "threads": os.cpu_count() or 1,
                "load_avg_1min": round(os.getloadavg()[0], 2),
            },
            "tools": _versions(),
            "evaluation": {
                "text": {
                    "path": str(self.text.path),
                    "origin": self.text.origin,
                    "sha256": self.text.sha256,
                    "size_bytes": self.text.size_bytes,
                },
                "default_text_chain": self.text_chain,
                "ctx": self.ctx,
                "chunks": self.chunks,
                "tokens_scored": self.tokens_scored,
                "method": "llama-perplexity --kl-divergence: second half of each chunk scored, "
                "KL over reference log-probs above -16",
            },
            "reference": self.reference.to_json(self.folder),
            "variants": [v.to_json(self.folder) for v in self.variants],
            "artifacts": [
                {"file": _rel(r.path, self.folder), "sha256": r.sha256, "size_bytes": r.size_bytes}
                for r in rows
                if r.kept
            ],
            "notes": self.notes,
        }


def _is_quantized(t: str | None) -> bool:
    return t is not None and t != "" and t.upper() not in ("F32", "F16", "BF16")


def _rel(path: Path, folder: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(folder).resolve()))
    except ValueError:
        return str(Path(path).resolve())


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(float(x), digits)


def _versions() -> dict:
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for dist in ("edge-llm", "llama-cpp-python", "gguf"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def source_notes(source_type: str | None) -> list[str]:
    if not _is_quantized(source_type):
        return []
    return [
        f"The source was already quantized ({source_type}): every variant is a requantization, its error "
        "compounds, and quality need not fall monotonically with bits (a type matching the source grid "
        "can come out nearly lossless)."
    ]


# -- output -----------------------------------------------------------------------------------------

COLUMNS = (
    "format",
    "type",
    "size",
    "bits/w",
    "KLD mean",
    "KLD p99",
    "PPL",
    "ΔPPL %",
    "same top %",
    "pp t/s",
    "tg t/s",
    "fits",
)


def _cells(v: dict) -> list[str]:
    kld = _num(v["kld_mean"], 4)
    if v.get("without_imatrix"):
        kld += f" (no imatrix {_num(v['without_imatrix']['kld_mean'], 4)})"
    fits = _fits(v["fits"])
    return [
        v["format"],
        v["type"] + (" +imatrix" if v["imatrix"] else ""),
        _size(v["size_bytes"]),
        _num(v["bits_per_weight"], 2),
        kld,
        _num(v["kld_p99"], 4),
        _num(v["ppl"], 3),
        _num(v["ppl_delta_pct"], 2, signed=True),
        _num(v["same_top_pct"], 2),
        _num(v["prompt_tps"], 0),
        _num(v["gen_tps"], 0),
        fits,
    ]


def _fits(names: list[str] | None) -> str:
    from profiles.profile import list_profiles

    if names is None:
        return "-"
    total = len(list_profiles())
    if len(names) == total:
        return f"all {total}"
    return ", ".join(names) if names else "none"


def print_table(data: dict, console) -> None:
    table = Table(
        title=f"{data['name']}: quality against {data['reference']['type']} "
        f"({data['evaluation']['chunks']} chunks of {data['evaluation']['ctx']} tokens)"
    )
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("format", "type", "fits") else "right")
    for v in [data["reference"], *data["variants"]]:
        table.add_row(*_cells(v))
    console.print(table)
    for note in data["notes"]:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)


def to_markdown(data: dict) -> str:
    ev, ref = data["evaluation"], data["reference"]
    lines = [
        f"# {data['name']}: quantization ladder",
        "",
        f"Measured on {ev['text']['origin']} (`{ev['text']['path']}`, sha256 {ev['text']['sha256'][:16]}…), "
        f"{ev['chunks']} chunks of {ev['ctx']} tokens, {ev['tokens_scored']} tokens scored, against "
        f"`{ref['file']}` ({ref['format']} {ref['type']}, perplexity {_num(ref['ppl'], 4)}). "
        f"Method: {ev['method']}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for v in [ref, *data["variants"]]:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(v)) + " |")
    lines += [
        "",
        *(f"- {n}" for n in data["notes"]),
        *_fallback_lines(data),
        "",
        "## Files",
        "",
        "| file | size | sha256 |",
        "|---|---|---|",
    ]
    lines += [f"| {a['file']} | {a['size_bytes']} | `{a['sha256']}` |" for a in data["artifacts"]]
    m = data["machine"]
    lines += [
        "",
        f"Speed measured on {m['processor']} ({m['threads']} threads, load average {m['load_avg_1min']} "
        "at the end: speed figures from a busy machine are low); tools: "
        + ", ".join(f"{k} {v}" for k, v in data["tools"].items()),
        "",
    ]
    return "\n".join(lines)


def _fallback_lines(data: dict) -> list[str]:
    """llama.cpp's per-tensor fallbacks, one line per variant and target type (printed once during convert)."""
    return [f"- {v['type']}: {fb['summary']}" for v in data["variants"] for fb in v.get("fallbacks") or []]


def write_report(data: dict, folder: Path, name: str, *, force: bool = True) -> tuple[Path, Path]:
    """`<name>-report.md` and `<name>-report.json` in folder, written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    md, js = folder / f"{name}-report.md", folder / f"{name}-report.json"
    for path, text in ((md, to_markdown(data)), (js, json.dumps(data, indent=2, ensure_ascii=False) + "\n")):
        write_atomic(path, text, force=force)
    return md, js


def _num(x: float | None, digits: int, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
