"""Phi-3 (HF model_type "phi3") as an onnxruntime decoder graph.

Fused qkv_proj and gate_up_proj (already packed the way the graph wants them); longrope / su
scaling: short factors up to original_max_position_embeddings, long factors beyond (the graph picks
the cache with the total length, as transformers does per forward), cos/sin times the attention factor.
"""

from __future__ import annotations

from dataclasses import replace

from quantize.archs.phi3 import LONGROPE, Phi3Config

from .decoder import DecoderSpec, Layout, Weights
from .rope import Rope

L = "model.layers.{bid}."
WEIGHTS = Weights(
    qkv=(L + "self_attn.qkv_proj.weight",),
    o=L + "self_attn.o_proj.weight",
    gate_up=(L + "mlp.gate_up_proj.weight",),
    down=L + "mlp.down_proj.weight",
)


def layout(cfg: Phi3Config, vocab: int) -> Layout:
    short = long = Rope(dim=cfg.rope_dims, base=cfg.rope_theta, positions=cfg.max_position_embeddings)
    if cfg.rope_type in LONGROPE:
        rs = cfg.rope_scaling or {}
        short = replace(short, divisors=tuple(map(float, rs["short_factor"])), magnitude=cfg.attn_factor)
        long = replace(long, divisors=tuple(map(float, rs["long_factor"])), magnitude=cfg.attn_factor)
    n = cfg.num_hidden_layers
    return Layout(
        n_layers=n,
        n_heads=cfg.num_attention_heads,
        n_kv_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        hidden=cfg.hidden_size,
        vocab=vocab,
        eps=cfg.rms_norm_eps,
        ropes=[short] * n,
        long_ropes=[long] * n if long is not short else None,
        long_after=cfg.original_max_position_embeddings,
    )


SPEC = DecoderSpec(model_type="phi3", weights=WEIGHTS, layout=layout)
