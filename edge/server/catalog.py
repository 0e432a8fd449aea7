"""What /api/tags, /api/show and /api/ps say about a model file, in Ollama's words.

The loaded model is described by its engine; other files in the store by their GGUF header
(read once per file version, never their weights into memory).
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from edge.backends.base import ModelInfo

_cache: dict[tuple, "FileFacts"] = {}
_cache_lock = threading.Lock()

MODEL_INFO_KEYS = ("general.architecture", "general.name", "general.size_label", "general.license", "general.file_type")


@dataclass(frozen=True)
class FileFacts:
    format: str
    family: str = ""
    parameter_count: int = 0
    quantization: str = ""
    context_length: int = 0
    chat_template: str | None = None
    model_info: dict = field(default_factory=dict)


def human_number(n: int) -> str:
    """Ollama's parameter_size spelling: 134515008 -> "134.52M", 8030261248 -> "8.0B"."""
    for unit, scale, fmt in (("B", 1e9, "{:.1f}"), ("M", 1e6, "{:.2f}")):
        if n >= scale:
            x = n / scale
            return (f"{x:.0f}" if x == int(x) else fmt.format(x)) + unit
    return f"{n / 1e3:.0f}K" if n >= 1000 else str(n)


def rfc3339(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def details(facts: FileFacts) -> dict:
    return {"parent_model": "", "format": facts.format, "family": facts.family,
            "families": [facts.family] if facts.family else None,
            "parameter_size": human_number(facts.parameter_count) if facts.parameter_count else "",
            "quantization_level": facts.quantization}


def facts_from_info(info: ModelInfo) -> FileFacts:
    meta = info.metadata or {}
    model_info = {k: _number_or_text(v) for k, v in meta.items() if not k.startswith("tokenizer.")}
    model_info["general.parameter_count"] = info.parameter_count
    return FileFacts(format=info.format, family=info.family, parameter_count=info.parameter_count,
                     quantization=info.quantization, context_length=info.n_ctx_train,
                     chat_template=info.chat_template, model_info=model_info)


def facts_from_file(path: Path, fmt: str) -> FileFacts:
    """GGUF header facts, cached by (path, size, mtime); an unreadable header gives bare facts."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    facts = _read_gguf(path) if fmt == "gguf" else FileFacts(format=fmt)
    with _cache_lock:
        _cache[key] = facts
    return facts


def _read_gguf(path: Path) -> FileFacts:
    try:
        reader = gguf.GGUFReader(path, "r")
    except (ValueError, OSError, IndexError, KeyError):
        return FileFacts(format="gguf")
    arch = _field(reader, gguf.Keys.General.ARCHITECTURE) or ""
    ftype = _field(reader, gguf.Keys.General.FILE_TYPE)
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    info = {k: _field(reader, k) for k in MODEL_INFO_KEYS if _field(reader, k) is not None}
    ctx = _field(reader, gguf.Keys.LLM.CONTEXT_LENGTH.format(arch=arch)) or 0
    info.update({gguf.Keys.LLM.CONTEXT_LENGTH.format(arch=arch): ctx, "general.parameter_count": n_params})
    return FileFacts(format="gguf", family=arch, parameter_count=n_params, quantization=_ftype_name(ftype),
                     context_length=int(ctx), chat_template=_field(reader, gguf.Keys.Tokenizer.CHAT_TEMPLATE),
                     model_info=info)


def _field(reader: "gguf.GGUFReader", key: str):
    f = reader.get_field(key)
    if f is None:
        return None
    try:
        return f.contents()
    except (ValueError, IndexError, UnicodeDecodeError):
        return None


def _ftype_name(ftype: int | None) -> str:
    """gguf.LlamaFileType.MOSTLY_Q4_K_M -> "Q4_K_M", ALL_F32 -> "F32" (as Ollama's quantization_level)."""
    if ftype is None:
        return ""
    try:
        name = gguf.LlamaFileType(int(ftype)).name
    except ValueError:
        return f"ftype_{ftype}"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def _number_or_text(value: str):
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return float(value)
        except (TypeError, ValueError):
            return value
