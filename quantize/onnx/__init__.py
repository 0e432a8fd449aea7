"""ONNX export: HF checkpoint -> a folder onnxruntime runs fast (fused contrib ops, in-place KV).

One graph module per HF `model_type` (`quantize/onnx/<model_type>.py`, a `DecoderSpec`), the shared
decoder in decoder.py, weights formats in graph.py / quant.py, the folder and its manifest in
manifest.py, the orchestration in export.py (`export_onnx`).
"""

from __future__ import annotations

import importlib

from edge.errors import UnsupportedArchitectureError

SUPPORTED: tuple[str, ...] = ("llama", "phi3", "gemma", "gemma2", "gemma3", "gemma3_text")
ALIASES: dict[str, str] = {"gemma3_text": "gemma3"}


def get_spec(model_type: str | None):
    """The DecoderSpec for a config.json `model_type`; unsupported ones name the supported list."""
    if model_type not in SUPPORTED:
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} cannot be exported to ONNX; supported: {', '.join(SUPPORTED)}"
        )
    return importlib.import_module(f"{__name__}.{ALIASES.get(model_type, model_type)}").SPEC
