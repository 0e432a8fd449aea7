"""Gemma 3 text models (HF model_type "gemma3_text", and "gemma3" configs that are text-only).

On top of Gemma 2: per-head RMSNorm of q and k before rotary (GroupQueryAttention then takes q, k,
v unpacked), a local rope base (rope_local_base_freq, unscaled) on sliding layers and the global
base with optional linear scaling on full-attention layers, out-of-vocabulary embedding rows
dropped from the logits (the export keeps the tokenizer's size).
"""

from __future__ import annotations

from dataclasses import replace

from quantize.archs.gemma3 import Gemma3Config

from .decoder import DecoderSpec, Weights
from .gemma import gemma_layout
from .gemma2 import WEIGHTS as GEMMA2_WEIGHTS
from .gemma2 import gemma2_extras
from .rope import Rope

L = "model.layers.{bid}."
WEIGHTS: Weights = replace(GEMMA2_WEIGHTS, q_norm=L + "self_attn.q_norm.weight", k_norm=L + "self_attn.k_norm.weight")


def layout(cfg: Gemma3Config, vocab: int):
    positions = cfg.max_position_embeddings
    local = Rope(dim=cfg.head_dim, base=cfg.rope_local_base_freq, positions=positions)
    linear = float((cfg.rope_scaling or {})["factor"]) if cfg.rope_type == "linear" else 1.0
    if cfg.rope_type not in (None, "linear"):
        from edge.errors import UnsupportedArchitectureError

        raise UnsupportedArchitectureError(
            f"Gemma 3 rope_scaling {cfg.rope_type!r} is not supported by the ONNX export (supported: none, linear)"
        )
    glob = Rope(dim=cfg.head_dim, base=cfg.rope_theta, positions=positions, linear=linear)
    ropes = [local if swa else glob for swa in cfg.swa_layers]
    return gemma_layout(cfg, vocab, ropes, **gemma2_extras(cfg))


SPEC = DecoderSpec(model_type="gemma3", weights=WEIGHTS, layout=layout)
