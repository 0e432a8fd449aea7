"""Phi-3 / Phi-3.5 / Phi-4-mini (HF `model_type` "phi3") -> GGUF "phi3".

What differs from llama:
- fused projections stay fused: `qkv_proj` is llama.cpp's attn_qkv ((q + 2 kv) rows) and
  `gate_up_proj` its ffn_up (gate rows first, then up rows: llama.cpp splits it the same way);
- rotary embedding is NeoX style in llama.cpp too: no q/k permutation; `partial_rotary_factor`
  (Phi-4-mini) sets rope.dimension_count;
- `rope_scaling` "longrope" (alias "su"): the per-frequency long and short factors are written as the
  rope_factors_long / rope_factors_short tensors (llama.cpp picks long ones when the context exceeds
  `original_max_position_embeddings`, like transformers), and the attention factor
  sqrt(1 + ln(max/original) / ln(original)) (or the checkpoint's own `attention_factor`) as
  rope.scaling.attn_factor;
- `sliding_window` is written as metadata (0 when absent), although this llama.cpp ignores it for
  Phi-3 (it warns): outputs differ from transformers only past the window (2047 for Phi-3-mini).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np

from edge.errors import ModelFormatError

from .base import ArchConfig, ArchSpec, TensorRule, f32, u32

T = gguf.MODEL_TENSOR
K = gguf.Keys
ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.PHI3]
LONGROPE = ("longrope", "su")


@dataclass
class Phi3Config(ArchConfig):
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int
    num_key_value_heads: int = 0  # 0 or null: multi-head attention (num_attention_heads)
    max_position_embeddings: int = 4096
    original_max_position_embeddings: int = 0  # 0 or null: max_position_embeddings
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    partial_rotary_factor: float = 1.0
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"

    def __post_init__(self) -> None:
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        self.original_max_position_embeddings = self.original_max_position_embeddings or self.max_position_embeddings
        self.head_dim = self.hidden_size // self.num_attention_heads
        self.rope_dims = int(self.partial_rotary_factor * self.head_dim)
        self.sliding_window = self.sliding_window or 0  # 0 = none (what llama.cpp's converter writes)
        if self.hidden_act != "silu":
            raise ModelFormatError(f"hidden_act {self.hidden_act!r} is not supported for Phi-3 (llama.cpp runs silu)")
        if self.rope_scaling:
            self._check_longrope()

    @property
    def rope_type(self) -> str | None:
        rs = self.rope_scaling or {}
        kind = rs.get("rope_type", rs.get("type"))
        return None if kind in (None, "default") else str(kind).lower()

    def _check_longrope(self) -> None:
        if self.rope_type not in LONGROPE:
            raise ModelFormatError(
                f"rope_scaling type {self.rope_type!r} is not supported for Phi-3 (supported: longrope, su)"
            )
        for key in ("long_factor", "short_factor"):
            got = len((self.rope_scaling or {}).get(key) or ())
            if got != self.rope_dims // 2:
                raise ModelFormatError(
                    f"rope_scaling.{key} has {got} values, expected {self.rope_dims // 2} "
                    "(rotary dimensions / 2): config.json is inconsistent"
                )

    @property
    def attn_factor(self) -> float:
        """The longrope attention (magnitude) factor, as transformers computes it."""
        given = (self.rope_scaling or {}).get("attention_factor")
        if given is not None:
            return float(given)
        scale = self.max_position_embeddings / self.original_max_position_embeddings
        return math.sqrt(1 + math.log(scale) / math.log(self.original_max_position_embeddings)) if scale > 1 else 1.0

    # shapes, numpy order (out, in)
    @property
    def qkv_rows(self) -> int:
        return (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim


L = "model.layers.{bid}."
TENSORS = (
    TensorRule("model.embed_tokens.weight", T.TOKEN_EMBD, lambda c: (c.vocab_size, c.hidden_size)),
    TensorRule(L + "input_layernorm.weight", T.ATTN_NORM, lambda c: (c.hidden_size,)),
    TensorRule(L + "self_attn.qkv_proj.weight", T.ATTN_QKV, lambda c: (c.qkv_rows, c.hidden_size)),
    TensorRule(L + "self_attn.o_proj.weight", T.ATTN_OUT, lambda c: (c.hidden_size, c.hidden_size)),
    TensorRule(L + "post_attention_layernorm.weight", T.FFN_NORM, lambda c: (c.hidden_size,)),
    TensorRule(L + "mlp.gate_up_proj.weight", T.FFN_UP, lambda c: (2 * c.intermediate_size, c.hidden_size)),
    TensorRule(L + "mlp.down_proj.weight", T.FFN_DOWN, lambda c: (c.hidden_size, c.intermediate_size)),
    TensorRule("model.norm.weight", T.OUTPUT_NORM, lambda c: (c.hidden_size,)),
    # absent when tie_word_embeddings (Phi-4-mini): llama.cpp then reuses token_embd
    TensorRule("lm_head.weight", T.OUTPUT, lambda c: (c.vocab_size, c.hidden_size), required=False),
)

METADATA = (
    u32(K.LLM.CONTEXT_LENGTH, "max_position_embeddings"),
    u32(K.Rope.SCALING_ORIG_CTX_LEN, "original_max_position_embeddings"),
    u32(K.LLM.EMBEDDING_LENGTH, "hidden_size"),
    u32(K.LLM.FEED_FORWARD_LENGTH, "intermediate_size"),
    u32(K.LLM.BLOCK_COUNT, "num_hidden_layers"),
    u32(K.Attention.HEAD_COUNT, "num_attention_heads"),
    u32(K.Attention.HEAD_COUNT_KV, "num_key_value_heads"),
    f32(K.Attention.LAYERNORM_RMS_EPS, "rms_norm_eps"),
    u32(K.Rope.DIMENSION_COUNT, "rope_dims"),
    f32(K.Rope.FREQ_BASE, "rope_theta"),
    u32(K.Attention.SLIDING_WINDOW, "sliding_window"),
    u32(K.LLM.VOCAB_SIZE, "vocab_size"),
)


def extra_metadata(writer: gguf.GGUFWriter, cfg: Phi3Config) -> None:
    if cfg.rope_type in LONGROPE:
        writer.add_rope_scaling_attn_factors(cfg.attn_factor)


def extra_tensors(cfg: Phi3Config) -> Iterable[tuple[str, np.ndarray]]:
    if cfg.rope_type in LONGROPE:
        for key, tensor in (("long_factor", T.ROPE_FACTORS_LONG), ("short_factor", T.ROPE_FACTORS_SHORT)):
            factors = (cfg.rope_scaling or {})[key]  # checked in Phi3Config._check_longrope
            yield gguf.TENSOR_NAMES[tensor] + ".weight", np.asarray(factors, np.float32)  # (rope_dims/2,)


def extra_config(kv: dict[str, Any], config: dict[str, Any]) -> None:
    """config.json fields the tables do not restore (the longrope factors live in tensors)."""
    config.pop("rope_dims", None)
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    rope_dims = kv.get(K.Rope.DIMENSION_COUNT.format(arch=ARCH), head_dim)
    if rope_dims != head_dim:
        config["partial_rotary_factor"] = rope_dims / head_dim
    if not config.get("sliding_window"):
        config["sliding_window"] = None
    config.setdefault("hidden_act", "silu")


def tensors_to_config(generated: dict[str, np.ndarray], config: dict[str, Any]) -> Iterable[str]:
    """Inverse of extra_tensors: the longrope factors (and attention factor) back into rope_scaling."""
    long, short = (gguf.TENSOR_NAMES[t] + ".weight" for t in (T.ROPE_FACTORS_LONG, T.ROPE_FACTORS_SHORT))
    if long not in generated or short not in generated:
        return ()
    config["rope_scaling"] = {
        "type": "longrope",
        "long_factor": [float(x) for x in generated[long].reshape(-1)],
        "short_factor": [float(x) for x in generated[short].reshape(-1)],
    }
    return long, short


SPEC = ArchSpec(
    model_type="phi3",
    arch=gguf.MODEL_ARCH.PHI3,
    config=Phi3Config,
    hf_architecture="Phi3ForCausalLM",
    tensors=TENSORS,
    metadata=METADATA,
    extra_metadata=extra_metadata,
    extra_tensors=extra_tensors,
    extra_config=extra_config,
    tensors_to_config=tensors_to_config,
)
