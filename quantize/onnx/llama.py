"""Llama 2 / 3 / 3.1 / 3.2 and SmolLM2 (HF model_type "llama") as an onnxruntime decoder graph.

Separate q/k/v (packed into one MatMul), SiLU MLP with gate/up packed, rope scaling: none, linear or
llama3 (per-frequency divisors, the same factors the GGUF converter writes as rope_freqs).
"""

from __future__ import annotations

from dataclasses import replace

from quantize.archs.llama import LlamaConfig, llama3_rope_factors

from .decoder import DecoderSpec, Layout, Weights
from .rope import Rope

L = "model.layers.{bid}."
WEIGHTS = Weights(
    qkv=(L + "self_attn.q_proj.weight", L + "self_attn.k_proj.weight", L + "self_attn.v_proj.weight"),
    qkv_bias=(L + "self_attn.q_proj.bias", L + "self_attn.k_proj.bias", L + "self_attn.v_proj.bias"),
    o=L + "self_attn.o_proj.weight",
    o_bias=L + "self_attn.o_proj.bias",
    gate_up=(L + "mlp.gate_proj.weight", L + "mlp.up_proj.weight"),
    down=L + "mlp.down_proj.weight",
)


def rope(cfg: LlamaConfig) -> Rope:
    kind = cfg.rope_type
    plain = Rope(dim=cfg.head_dim, base=cfg.rope_theta, positions=cfg.max_position_embeddings)
    if kind is None:
        return plain
    if kind == "linear":
        return replace(plain, linear=float((cfg.rope_scaling or {})["factor"]))
    if kind == "llama3":
        return replace(plain, divisors=tuple(float(f) for f in llama3_rope_factors(cfg)))
    raise ValueError(f"rope_scaling {kind!r}")  # LlamaConfig's checks refuse other kinds before this


def layout(cfg: LlamaConfig, vocab: int) -> Layout:
    if cfg.mlp_bias:
        from edge.errors import UnsupportedArchitectureError

        raise UnsupportedArchitectureError("Llama checkpoints with mlp_bias are not supported by the ONNX export")
    return Layout(
        n_layers=cfg.num_hidden_layers,
        n_heads=cfg.num_attention_heads,
        n_kv_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        hidden=cfg.hidden_size,
        vocab=vocab,
        eps=cfg.rms_norm_eps,
        ropes=[rope(cfg)] * cfg.num_hidden_layers,
    )


SPEC = DecoderSpec(model_type="llama", weights=WEIGHTS, layout=layout)
