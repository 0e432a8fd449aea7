"""genai_config.json: what onnxruntime-genai needs to run an exported folder as it is.

`onnxruntime_genai.Model(folder)` reads this file beside model.onnx, plus tokenizer.json and
tokenizer_config.json (copied by the exporter). It names the graph's inputs and outputs, the KV
cache layout (per-layer past/present names; whether present shares past's buffer, as our
GroupQueryAttention graphs do, or grows by concatenation, as optimum's do), the model's special ids
and context length, and generation defaults from the checkpoint's generation_config.json.
Field names follow onnxruntime-genai's configuration reference (`model.decoder`, `search`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GENAI_CONFIG = "genai_config.json"
# Hugging Face model_type -> onnxruntime-genai's model type (same name unless listed)
GENAI_TYPES = {"gemma3": "gemma3_text"}


def genai_config(model: dict[str, Any], generation: dict[str, Any], *, kv_cache: str = "inplace") -> dict[str, Any]:
    """The config for a folder whose manifest model section is `model` (quantize/onnx/export.py).

    kv_cache: "inplace" (present bound to past's buffer, our graphs) or "concat" (optimum's graphs,
    which also take position_ids)."""
    eos = list(model.get("eos_token_ids") or [])
    inputs = {
        "input_ids": "input_ids",
        "attention_mask": "attention_mask",
        "past_key_names": "past_key_values.%d.key",
        "past_value_names": "past_key_values.%d.value",
    }
    if kv_cache == "concat":
        inputs["position_ids"] = "position_ids"
    max_length = int(min(model.get("context_length") or model["max_positions"], model["max_positions"]))
    pad = model.get("pad_token_id")
    return {
        "model": {
            "bos_token_id": model.get("bos_token_id"),
            "context_length": max_length,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx",
                "head_size": model["head_dim"],
                "hidden_size": model["hidden_size"],
                "inputs": inputs,
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": model["n_heads"],
                "num_hidden_layers": model["n_layers"],
                "num_key_value_heads": model["n_kv_heads"],
            },
            "eos_token_id": eos if len(eos) != 1 else eos[0],
            "pad_token_id": pad if isinstance(pad, int) else (eos[0] if eos else 0),
            "type": GENAI_TYPES.get(model["model_type"], model["model_type"]),
            "vocab_size": model["vocab_size"],
        },
        "search": _search(generation, max_length, share_buffer=kv_cache == "inplace"),
    }


def _search(gen: dict[str, Any], max_length: int, *, share_buffer: bool) -> dict[str, Any]:
    """onnxruntime-genai's search defaults, from generation_config.json where it sets them."""
    return {
        "diversity_penalty": 0.0,
        "do_sample": bool(gen.get("do_sample", False)),
        "early_stopping": True,
        "length_penalty": 1.0,
        "max_length": max_length,
        "min_length": 0,
        "no_repeat_ngram_size": 0,
        "num_beams": 1,
        "num_return_sequences": 1,
        "past_present_share_buffer": share_buffer,
        "repetition_penalty": float(gen.get("repetition_penalty", 1.0)),
        "temperature": float(gen.get("temperature", 1.0)),
        "top_k": int(gen.get("top_k", 50 if gen.get("do_sample") else 1)),
        "top_p": float(gen.get("top_p", 1.0)),
    }


def write_genai_config(folder: Path, model: dict[str, Any], *, kv_cache: str = "inplace") -> Path:
    gen_path = folder / "generation_config.json"
    generation = json.loads(gen_path.read_text(encoding="utf-8")) if gen_path.is_file() else {}
    path = folder / GENAI_CONFIG
    config = genai_config(model, generation if isinstance(generation, dict) else {}, kv_cache=kv_cache)
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path
