"""What /api/tags, /api/show, /api/ps and /v1/models say about the models, in Ollama's words.

A loaded model is described by its engine; other files in the store by their GGUF header
(edge.formats.gguf's bounded reader, cached per file version; weights are never read).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from edge.chat.toolformats import detect_format
from edge.engine.base import ModelInfo
from edge.errors import EdgeError
from edge.formats.gguf import cached_gguf_meta
from edge.lightimport import gguf_constants
from edge.store import adapter_record

gguf = gguf_constants()  # the enums and tables only: no reader, writer or numpy (edge.lightimport)


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
    return {
        "parent_model": "",
        "format": facts.format,
        "family": facts.family,
        "families": [facts.family] if facts.family else None,
        "parameter_size": human_number(facts.parameter_count) if facts.parameter_count else "",
        "quantization_level": facts.quantization,
    }


def tool_format(facts: FileFacts) -> str:
    """The tool-call format the model's template speaks (edge.chat.toolformats); "generic" without tools."""
    return detect_format(facts.chat_template).name


def capabilities(facts: FileFacts) -> list[str]:
    """Ollama's capabilities: "tools" when the template itself takes tools (any model can use the
    generic format, but only these were trained for calls)."""
    return ["completion", "tools"] if tool_format(facts) != "generic" else ["completion"]


def adapter_facts(adapter: Path, scale: float, base_name: str | None) -> dict:
    """model_info keys of a LoRA adapter on its base (Ollama shows GGUF keys there): its name and file,
    the base and scale a request gets, rank and alpha from the adapter's header, and the base the
    adapter was checked against when `edge-quantize adapter --install` put it in the store."""
    info = {
        "adapter.name": adapter.stem.lower(),
        "adapter.file": str(adapter),
        "adapter.base": base_name or "",
        "adapter.scale": scale,
    }
    try:
        meta = cached_gguf_meta(adapter)
    except EdgeError:
        meta = None
    if meta is not None:
        info["adapter.lora.alpha"] = meta.kv.get(gguf.Keys.Adapter.LORA_ALPHA)
        ranks = [min(t.shape) for t in meta.tensors or () if t.name.endswith(".lora_a") and t.shape]
        info["adapter.lora.rank"] = max(ranks) if ranks else None
    installed = adapter_record(adapter).get("base")
    if installed:
        info["adapter.installed_for"] = installed
    return info


@dataclass(frozen=True)
class Servable:
    """A model a request may name, as /api/tags and /v1/models list it."""

    name: str
    path: Path
    format: str
    size_bytes: int
    modified: float


def servable(state) -> list[Servable]:
    """Every model in the store, after any file the server keeps loaded from outside it
    (`edge serve PATH`): each can be asked for by name. `model+adapter` names follow the models, then
    the aliases (an alias that shadows a model's name replaces its row, as asking for it does)."""
    rows, seen = [], set()
    entries = state.store.list()
    named = state.store.alias_entries(entries)
    shadowed = {e.name for e in named}
    for e in [e for e in entries + state.store.with_adapters(entries) if e.name not in shadowed] + named:
        rows.append(Servable(e.name, Path(e.path), e.format, e.size_bytes, e.modified))
        seen.add(str(Path(e.path).resolve()))
    outside = [t for k, t in state.models.pinned.items() if k not in seen]
    return [Servable(t.name, t.path, "gguf", t.size_bytes, t.modified) for t in outside] + rows


def facts_from_info(info: ModelInfo) -> FileFacts:
    meta = info.metadata or {}
    model_info = {k: _number_or_text(v) for k, v in meta.items() if not k.startswith("tokenizer.")}
    model_info["general.parameter_count"] = info.parameter_count
    return FileFacts(
        format=info.format,
        family=info.family,
        parameter_count=info.parameter_count,
        quantization=info.quantization,
        context_length=info.n_ctx_train,
        chat_template=info.chat_template,
        model_info=model_info,
    )


def facts_from_file(path: Path, fmt: str) -> FileFacts:
    """Facts from the GGUF header (bounded reader, cached per file version); bare facts when the file
    is missing (a bundled model not assembled yet) or unreadable: a listing never fails on one file."""
    if fmt != "gguf" or not path.is_file():
        return FileFacts(format=fmt)
    try:
        meta = cached_gguf_meta(path)
    except EdgeError:
        return FileFacts(format=fmt)
    arch = meta.architecture
    ctx_key = gguf.Keys.LLM.CONTEXT_LENGTH.format(arch=arch)
    info = {
        k: v
        for k, v in meta.kv.items()
        if k.startswith(("general.", f"{arch}.")) and isinstance(v, (str, int, float, bool))
    }
    info["general.parameter_count"] = meta.parameter_count or 0
    return FileFacts(
        format="gguf",
        family=arch,
        parameter_count=meta.parameter_count or 0,
        quantization=meta.quantization,
        context_length=int(meta.kv.get(ctx_key, 0) or 0),
        chat_template=meta.chat_template,
        model_info=info,
    )


def _number_or_text(value: str):
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return float(value)
        except (TypeError, ValueError):
            return value
