"""Gemma 2 (HF model_type "gemma2") as an onnxruntime decoder graph.

On top of Gemma: post-attention and post-feed-forward norms (pre_feedforward_layernorm is the norm
before the MLP), queries scaled by query_pre_attn_scalar**-0.5 (GroupQueryAttention's `scale`),
attention soft-cap (its `softcap`), final logit soft-cap (tanh in the graph), sliding window on the
layers `layer_types` marks (its `local_window_size`).
"""

from __future__ import annotations

from dataclasses import replace

from quantize.archs.gemma2 import Gemma2Config

from .decoder import DecoderSpec, Weights
from .gemma import WEIGHTS as GEMMA_WEIGHTS
from .gemma import gemma_layout
from .rope import Rope

L = "model.layers.{bid}."
WEIGHTS: Weights = replace(
    GEMMA_WEIGHTS,
    ffn_norm=L + "pre_feedforward_layernorm.weight",
    post_attn_norm=L + "post_attention_layernorm.weight",
    post_ffn_norm=L + "post_feedforward_layernorm.weight",
)


def gemma2_extras(cfg: Gemma2Config) -> dict:
    return dict(
        windows=[cfg.sliding_window if swa else 0 for swa in cfg.swa_layers],
        attn_scale=float(cfg.query_pre_attn_scalar) ** -0.5,
        attn_softcap=float(cfg.attn_logit_softcapping or 0.0),
        final_softcap=float(cfg.final_logit_softcapping or 0.0),
    )


def layout(cfg: Gemma2Config, vocab: int):
    rope = Rope(dim=cfg.head_dim, base=cfg.rope_theta, positions=cfg.max_position_embeddings)
    return gemma_layout(cfg, vocab, [rope] * cfg.num_hidden_layers, **gemma2_extras(cfg))


SPEC = DecoderSpec(model_type="gemma2", weights=WEIGHTS, layout=layout)
