"""Gemma 1 (HF model_type "gemma") as an onnxruntime decoder graph.

RMSNorm multiplies by (1 + w) (folded into the norm constants), embeddings are scaled by
sqrt(hidden_size), GELU with the tanh approximation (FastGelu), lm_head tied to the embedding.
"""

from __future__ import annotations

from quantize.archs.gemma import GemmaConfig

from .decoder import DecoderSpec, Layout, Weights
from .rope import Rope

L = "model.layers.{bid}."
WEIGHTS = Weights(
    qkv=(L + "self_attn.q_proj.weight", L + "self_attn.k_proj.weight", L + "self_attn.v_proj.weight"),
    o=L + "self_attn.o_proj.weight",
    gate_up=(L + "mlp.gate_proj.weight", L + "mlp.up_proj.weight"),
    down=L + "mlp.down_proj.weight",
)


def gemma_layout(cfg: GemmaConfig, vocab: int, ropes: list[Rope], **kw) -> Layout:
    return Layout(
        n_layers=cfg.num_hidden_layers,
        n_heads=cfg.num_attention_heads,
        n_kv_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        hidden=cfg.hidden_size,
        vocab=vocab,
        eps=cfg.rms_norm_eps,
        ropes=ropes,
        norm_offset=1.0,
        embed_scale=cfg.hidden_size**0.5,
        act="gelu_tanh",
        **kw,
    )


def layout(cfg: GemmaConfig, vocab: int) -> Layout:
    rope = Rope(dim=cfg.head_dim, base=cfg.rope_theta, positions=cfg.max_position_embeddings)
    return gemma_layout(cfg, vocab, [rope] * cfg.num_hidden_layers)


SPEC = DecoderSpec(model_type="gemma", weights=WEIGHTS, layout=layout)
