"""Architecture registry: Hugging Face `model_type` -> `ArchSpec` (see base.py).

One module per HF `model_type` (`quantize/archs/<model_type>.py`), each exposing `SPEC: ArchSpec`.

How to add an architecture (e.g. `phi3`):
1. Create `quantize/archs/phi3.py` with
   - a config dataclass subclassing `base.ArchConfig` (fields read from config.json, defaults as in
     transformers, derived values in `__post_init__`; it must have `num_hidden_layers`);
   - `TENSORS`: `TensorRule(hf="model.layers.{bid}.self_attn.qkv_proj.weight",
     tensor=gguf.MODEL_TENSOR.ATTN_QKV, shape=lambda c: (..., c.hidden_size))` rows, with a
     `Transform` where llama.cpp's layout differs (`base.permute_rows`, `base.PLUS_ONE`, or your own
     forward/inverse pair, plus `out_shape` if the shape changes); `required=False` for optional
     tensors (biases, an untied lm_head);
   - `METADATA`: `base.u32/f32/boolean(gguf.Keys..., "config_attr")` rows; both directions use them;
   - hooks only for what a table cannot say: `extra_metadata(writer, cfg)` (e.g. rope scaling keys),
     `extra_tensors(cfg)` (generated tensors such as rope_freqs, yielded as (gguf name, f32 array)),
     `extra_config(kv, config)` (the inverse of extra_metadata, for unpack);
   - `SPEC = ArchSpec(model_type="phi3", arch=gguf.MODEL_ARCH.PHI3, ...)`.
2. Add "phi3" to `SUPPORTED` below (or to `ALIASES` if an existing module already covers it).
3. Add a tiny config to the shared runner (tests/quantize/test_archs.py).
The converter checks every checkpoint tensor against the table (unknown or missing tensors and
shapes that disagree with config.json are errors), so a forgotten row cannot pass silently.
"""

from __future__ import annotations

import importlib

from edge.errors import UnsupportedArchitectureError

from .base import ArchSpec

SUPPORTED: tuple[str, ...] = ("llama", "phi3", "gemma", "gemma2", "gemma3", "gemma3_text", "bert")
ALIASES: dict[str, str] = {"gemma3_text": "gemma3"}  # model_type -> module sharing its code


def _module_name(model_type: str) -> str:
    return ALIASES.get(model_type, model_type)


def available() -> tuple[str, ...]:
    """The supported model types whose module is present (others may still be in progress)."""
    out = []
    for model_type in SUPPORTED:
        try:
            importlib.import_module(f"{__name__}.{_module_name(model_type)}")
        except ModuleNotFoundError:
            continue
        out.append(model_type)
    return tuple(out)


def get_arch(model_type: str | None) -> ArchSpec:
    """The ArchSpec for a config.json `model_type`; UnsupportedArchitectureError names the supported ones."""
    if model_type not in SUPPORTED:
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(available())}"
        )
    try:
        module = importlib.import_module(f"{__name__}.{_module_name(model_type)}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{_module_name(model_type)}":
            raise
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} is not available in this build; supported: {', '.join(available())}"
        ) from None
    return module.SPEC


def get_arch_for_gguf(arch_name: str) -> ArchSpec:
    """The ArchSpec whose GGUF `general.architecture` is `arch_name` (for unpack)."""
    for model_type in available():
        spec = get_arch(model_type)
        if spec.arch_name == arch_name:
            return spec
    raise UnsupportedArchitectureError(
        f"GGUF architecture {arch_name!r} cannot be unpacked; supported model types: {', '.join(available())}"
    )
