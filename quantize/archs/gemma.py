"""Gemma (HF `model_type` "gemma") -> GGUF "gemma"; also the shared pieces of gemma2 / gemma3.

What differs from llama:
- RMSNorm computes x * (1 + w) and HF stores w: llama.cpp multiplies by the stored weight, so every
  norm is written as w + 1 (`base.PLUS_ONE`; unpack subtracts it again).
- Rotary embedding is NeoX style (rotate-half) in llama.cpp too: no q/k permutation.
- Embeddings are tied: there is no `output` tensor, llama.cpp reuses token_embd. The input scaling
  by sqrt(hidden_size) is done by llama.cpp itself. A stray `lm_head.weight` (AutoAWQ) is dropped.
- The MLP is GeGLU with the tanh approximation (gelu_pytorch_tanh), which is what llama.cpp runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gguf

from edge.errors import ModelFormatError

from .base import PLUS_ONE, ArchConfig, ArchSpec, TensorRule, f32, u32

T = gguf.MODEL_TENSOR
K = gguf.Keys

GELU_TANH = ("gelu_pytorch_tanh", "gelu", None)  # HF Gemma maps legacy "gelu" to the tanh form


@dataclass
class GemmaConfig(ArchConfig):
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int
    num_key_value_heads: int = 0  # 0 or null: multi-head attention (num_attention_heads)
    head_dim: int = 256  # transformers' default for Gemma
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    hidden_activation: str | None = None
    hidden_act: str | None = None

    def __post_init__(self) -> None:
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        act = self.hidden_activation or self.hidden_act
        if act not in GELU_TANH:
            raise ModelFormatError(
                f"hidden activation {act!r} is not supported for Gemma (llama.cpp runs gelu_pytorch_tanh)"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelFormatError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}: config.json is inconsistent"
            )

    # shapes, numpy order (out, in)
    @property
    def q_rows(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_rows(self) -> int:
        return self.num_key_value_heads * self.head_dim


L = "model.layers.{bid}."


def norm(hf: str, tensor: T, size: str = "hidden_size") -> TensorRule:
    """A Gemma RMSNorm weight: stored as w, written as 1 + w."""
    return TensorRule(hf=hf, tensor=tensor, shape=lambda c: (getattr(c, size),), transform=PLUS_ONE)


def core_tensors(q_transform=None) -> tuple[TensorRule, ...]:
    """Embedding, attention projections, GeGLU MLP and final norm shared by every Gemma."""
    return (
        TensorRule("model.embed_tokens.weight", T.TOKEN_EMBD, lambda c: (c.vocab_size, c.hidden_size)),
        norm(L + "input_layernorm.weight", T.ATTN_NORM),
        TensorRule(L + "self_attn.q_proj.weight", T.ATTN_Q, lambda c: (c.q_rows, c.hidden_size), transform=q_transform),
        TensorRule(L + "self_attn.k_proj.weight", T.ATTN_K, lambda c: (c.kv_rows, c.hidden_size)),
        TensorRule(L + "self_attn.v_proj.weight", T.ATTN_V, lambda c: (c.kv_rows, c.hidden_size)),
        TensorRule(L + "self_attn.o_proj.weight", T.ATTN_OUT, lambda c: (c.hidden_size, c.q_rows)),
        TensorRule(L + "mlp.gate_proj.weight", T.FFN_GATE, lambda c: (c.intermediate_size, c.hidden_size)),
        TensorRule(L + "mlp.up_proj.weight", T.FFN_UP, lambda c: (c.intermediate_size, c.hidden_size)),
        TensorRule(L + "mlp.down_proj.weight", T.FFN_DOWN, lambda c: (c.hidden_size, c.intermediate_size)),
        norm("model.norm.weight", T.OUTPUT_NORM),
    )


TENSORS = core_tensors() + (norm(L + "post_attention_layernorm.weight", T.FFN_NORM),)

METADATA = (
    u32(K.LLM.CONTEXT_LENGTH, "max_position_embeddings"),
    u32(K.LLM.EMBEDDING_LENGTH, "hidden_size"),
    u32(K.LLM.BLOCK_COUNT, "num_hidden_layers"),
    u32(K.LLM.FEED_FORWARD_LENGTH, "intermediate_size"),
    u32(K.Attention.HEAD_COUNT, "num_attention_heads"),
    u32(K.Attention.HEAD_COUNT_KV, "num_key_value_heads"),
    u32(K.Attention.KEY_LENGTH, "head_dim"),
    u32(K.Attention.VALUE_LENGTH, "head_dim"),
    f32(K.Attention.LAYERNORM_RMS_EPS, "rms_norm_eps"),
    f32(K.Rope.FREQ_BASE, "rope_theta"),
    u32(K.LLM.VOCAB_SIZE, "vocab_size"),
)

# Gemma is always tied; AutoAWQ checkpoints carry an unused copy of lm_head (llama.cpp drops it too).
IGNORED = (".rotary_emb.inv_freq", "lm_head.weight")


def extra_config(kv: dict[str, Any], config: dict[str, Any]) -> None:
    config.setdefault("hidden_activation", "gelu_pytorch_tanh")
    config["tie_word_embeddings"] = True


SPEC = ArchSpec(
    model_type="gemma",
    arch=gguf.MODEL_ARCH.GEMMA,
    config=GemmaConfig,
    hf_architecture="GemmaForCausalLM",
    tensors=TENSORS,
    metadata=METADATA,
    extra_config=extra_config,
    ignored=IGNORED,
)
