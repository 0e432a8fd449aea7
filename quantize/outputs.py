"""What a conversion reads and writes, decided once before any work: one planned output per requested type.

    GGUF type   OUTDIR/<name>-<type>.gguf          (a file, written through edge.fsio.atomic_file)
    onnx:<t>    OUTDIR/<name>-onnx-<t>/            (a folder, published through edge.fsio.atomic_folder)

<name> is --name, else the checkpoint folder's name, or the GGUF file's stem without its type
suffix. `plan` parses every type and refuses existing outputs (unless force), so a typo or a
forgotten --force stops the run before the first byte; `--dry-run` prints the same plan.
`read_config` reads a checkpoint's config.json for the GGUF converter and the ONNX export alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge.errors import ModelFormatError, NotFoundError
from edge.fsio import refuse_existing

from .quantizer import TYPES, QuantType, parse_types

ONNX_PREFIX = "onnx:"


@dataclass(frozen=True)
class PlannedOutput:
    type: str  # "Q4_K_M", "onnx:int4_bs32"
    kind: str  # "gguf" (a file) | "onnx" (a folder)
    path: Path
    predicted_bytes: int | None = None  # None: no size model for this type (or not asked for)


@dataclass(frozen=True)
class OutputPlan:
    name: str
    out_dir: Path
    gguf_types: list[QuantType]
    onnx_types: list = field(default_factory=list)  # quantize.onnx.quant.OnnxType
    outputs: list[PlannedOutput] = field(default_factory=list)  # ONNX folders first, then GGUF files

    def gguf_paths(self) -> dict[str, Path]:
        return {o.type: o.path for o in self.outputs if o.kind == "gguf"}

    def onnx_paths(self) -> dict[str, Path]:
        """ONNX type name ("int4_bs32") -> its folder."""
        return {o.type.removeprefix(ONNX_PREFIX): o.path for o in self.outputs if o.kind == "onnx"}


def split_types(types: list[str] | str) -> tuple[list[str], list[str]]:
    """A comma list (or list) of types -> (GGUF type names, onnx:* names), order kept."""
    names = [t.strip() for t in (types.split(",") if isinstance(types, str) else types) if t.strip()]
    onnx = [t for t in names if t.lower().startswith(ONNX_PREFIX)]
    return [t for t in names if t not in onnx], onnx


def default_name(src: Path) -> str:
    """Checkpoint folder name, or the GGUF file's stem without a trailing type suffix."""
    src = Path(src)
    if src.is_dir():
        return src.resolve().name
    stem = src.stem
    for sep in ("-", ".", "_"):
        head, _, tail = stem.rpartition(sep)
        if head and tail.upper() in TYPES:
            return head
    return stem


def read_config(src: Path) -> dict[str, Any]:
    """A checkpoint folder's config.json as a dict (what names the architecture of every output)."""
    path = Path(src) / "config.json"
    if not path.is_file():
        raise NotFoundError(f"{src} has no config.json: is it a Hugging Face checkpoint folder?")
    return read_json_object(path)


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object; ModelFormatError says what is wrong with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path} is not a JSON object")
    return data


def gguf_path(out_dir: Path, name: str, qtype: QuantType) -> Path:
    return Path(out_dir) / f"{name}-{qtype.file_suffix}.gguf"


def onnx_path(out_dir: Path, name: str, onnx_type_name: str) -> Path:
    return Path(out_dir) / f"{name}-onnx-{onnx_type_name}"


def plan(
    src: Path,
    types: list[str] | str,
    out_dir: Path,
    *,
    name: str | None = None,
    imatrix: bool = False,
    force: bool = False,
    check_existing: bool = True,
) -> OutputPlan:
    """Parse every type, name every output and (check_existing) refuse the ones that exist without force."""
    src, out_dir = Path(src), Path(out_dir)
    gguf_names, onnx_names = split_types(types)
    qtypes = parse_types(gguf_names, have_imatrix=imatrix) if gguf_names or not onnx_names else []
    otypes = []
    if onnx_names:
        from .onnx.quant import parse_onnx_type

        otypes = list({t.name: t for t in map(parse_onnx_type, onnx_names)}.values())
    if not src.exists():
        raise NotFoundError(f"{src} does not exist: give a Hugging Face checkpoint folder or a .gguf file")
    name = name or default_name(src)
    outputs = [PlannedOutput(t.label, "onnx", onnx_path(out_dir, name, t.name)) for t in otypes]
    outputs += [PlannedOutput(t.name, "gguf", gguf_path(out_dir, name, t)) for t in qtypes]
    if check_existing:
        for o in outputs:
            refuse_existing(o.path, force)
    return OutputPlan(name, out_dir, qtypes, otypes, outputs)


def dry_run(
    src: Path, types: list[str] | str, out_dir: Path, *, name: str | None = None, imatrix: bool = False
) -> list[PlannedOutput]:
    """--dry-run: every output a conversion would write, with the predicted size of GGUF files; writes nothing."""
    from profiles.plan.planner import file_bytes
    from profiles.plan.shape import read_model_shape
    from profiles.plan.types import TYPES

    p = plan(src, types, out_dir, name=name, imatrix=imatrix, check_existing=False)
    if not p.gguf_types:
        return p.outputs
    shape = read_model_shape(Path(src))
    return [
        replace(o, predicted_bytes=file_bytes(shape, o.type, imatrix)) if o.kind == "gguf" and o.type in TYPES else o
        for o in p.outputs
    ]
