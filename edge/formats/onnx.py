"""The ONNX model folder: what travels with model.onnx, and the manifest that lists it.

Shared by the exporter (quantize.onnx.export writes it) and the runtime (edge.engine.onnx.backend reads it);
it lives in edge/ because the runtime never imports quantize.

    <folder>/model.onnx            the decoder graph (decoder.py's interface)
    <folder>/model.onnx.data       external weights, for models above EXTERNAL_DATA_BYTES
    <folder>/tokenizer.json ...    tokenizer, its config, chat template, generation config, config.json
    <folder>/genai_config.json     what onnxruntime-genai reads to run the folder unchanged
    <folder>/edge_onnx.json        the manifest: format version, model numbers the runtime needs
                                   (layers, kv heads, head dim, vocab, eos ids, context), which
                                   exporter wrote the graph and its KV cache kind ("inplace": ours,
                                   "concat": optimum's), the type, and every file with its size and sha256

The runtime refuses a folder whose manifest is missing, of another format version, or whose files
differ in size from the manifest (a truncated copy); `verify_folder` also checks every sha256.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from edge.errors import ModelFormatError, NotFoundError
from edge.fsio import sha256_file

MANIFEST = "edge_onnx.json"
FORMAT_VERSION = 2  # bumped when the graph interface changes: older folders are refused, to be re-exported
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
EXTERNAL_DATA_BYTES = 1 << 30  # weights above 1 GiB go to model.onnx.data (protobuf caps a file at 2 GiB)
COMPANIONS = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "config.json",
)


def copy_companions(src: Path, dst: Path) -> list[str]:
    if not (src / "tokenizer.json").is_file():
        raise NotFoundError(
            f"{src} has no tokenizer.json; the ONNX runtime needs it (save the tokenizer "
            "with transformers' fast tokenizer, or unpack a GGUF with edge-quantize unpack)"
        )
    copied = []
    for name in COMPANIONS:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied


def write_manifest(folder: Path, model: dict[str, Any], type_label: str) -> Path:
    files = {
        p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    doc = {"format": "edge-onnx", "format_version": FORMAT_VERSION, "type": type_label, "model": model, "files": files}
    path = folder / MANIFEST
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest after checking its version and every listed file's presence and size."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ModelFormatError(
            f"{folder} has no {MANIFEST}: export the model with "
            "`edge-quantize convert SRC --to onnx:int4` (other ONNX exports lack the KV layout we need)"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{path} is not valid JSON ({exc}); re-export the model") from None
    if not isinstance(doc, dict) or doc.get("format") != "edge-onnx" or doc.get("format_version") != FORMAT_VERSION:
        raise ModelFormatError(f"{path} is not an edge-onnx manifest of version {FORMAT_VERSION}; re-export the model")
    files = doc.get("files")
    if not isinstance(files, dict) or not isinstance(doc.get("model"), dict):
        raise ModelFormatError(f"{path} lacks its file list or model section; re-export the model")
    for name, entry in files.items():
        target = Path(folder) / name
        if Path(name).name != name:
            raise ModelFormatError(f"{path} lists {name!r}, which is not a plain file name; refused")
        if not target.is_file():
            raise ModelFormatError(f"{folder} lacks {name}, listed in its manifest; copy the whole folder")
        if target.stat().st_size != entry.get("size"):
            raise ModelFormatError(
                f"{target} has {target.stat().st_size} bytes, the manifest says {entry.get('size')}: "
                "the copy is truncated or modified; copy the folder again"
            )
    return doc


def verify_folder(folder: Path) -> None:
    """read_manifest plus every file's sha256 (slow on big models: reads every byte)."""
    doc = read_manifest(folder)
    for name, entry in doc["files"].items():
        if sha256_file(Path(folder) / name) != entry.get("sha256"):
            raise ModelFormatError(f"{Path(folder) / name} does not match its sha256 in the manifest: corrupt copy")
