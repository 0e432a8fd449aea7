"""Llama 2, Llama 3 / 3.1 / 3.2 and SmolLM2 (all HF `model_type` "llama") -> GGUF "llama".

Grouped-query attention (num_key_value_heads < num_attention_heads); q/k rows permuted to
llama.cpp's interleaved rotary layout; Llama-3.1 `rope_scaling.rope_type == "llama3"` written as the
`rope_freqs` tensor (per-frequency factors, what llama.cpp multiplies into the rotary frequencies);
linear rope scaling as metadata; tied embeddings = no `output` tensor (llama.cpp reuses token_embd).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np

from edge.errors import ModelFormatError

from .base import ArchConfig, ArchSpec, TensorRule, f32, permute_rows, u32

T = gguf.MODEL_TENSOR
K = gguf.Keys


@dataclass
class LlamaConfig(ArchConfig):
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int
    num_key_value_heads: int = 0  # 0 or null: multi-head attention (num_attention_heads)
    head_dim: int = 0  # 0 or null: hidden_size // num_attention_heads
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "llama3" | "linear", "factor": ...}
    rope_parameters: dict | None = None  # transformers >= 5 spelling of the two above
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False

    def __post_init__(self) -> None:
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        if self.rope_parameters:
            self.rope_theta = self.rope_parameters.get("rope_theta", self.rope_theta)
            self.rope_scaling = self.rope_scaling or self.rope_parameters
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelFormatError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}: config.json is inconsistent"
            )

    @property
    def rope_type(self) -> str | None:
        if not self.rope_scaling:
            return None
        kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
        return None if kind in (None, "default") else str(kind).lower()

    # shapes, numpy order (out, in)
    @property
    def q_rows(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_rows(self) -> int:
        return self.num_key_value_heads * self.head_dim


def _rows(hf: str, tensor: T, shape, **kw: Any) -> TensorRule:
    return TensorRule(hf=hf, tensor=tensor, shape=shape, **kw)


_L = "model.layers.{bid}."
TENSORS = (
    _rows("model.embed_tokens.weight", T.TOKEN_EMBD, lambda c: (c.vocab_size, c.hidden_size)),
    _rows(_L + "input_layernorm.weight", T.ATTN_NORM, lambda c: (c.hidden_size,)),
    _rows(
        _L + "self_attn.q_proj.weight",
        T.ATTN_Q,
        lambda c: (c.q_rows, c.hidden_size),
        transform=permute_rows("num_attention_heads"),
    ),
    _rows(
        _L + "self_attn.k_proj.weight",
        T.ATTN_K,
        lambda c: (c.kv_rows, c.hidden_size),
        transform=permute_rows("num_key_value_heads"),
    ),
    _rows(_L + "self_attn.v_proj.weight", T.ATTN_V, lambda c: (c.kv_rows, c.hidden_size)),
    _rows(_L + "self_attn.o_proj.weight", T.ATTN_OUT, lambda c: (c.hidden_size, c.q_rows)),
    _rows(
        _L + "self_attn.q_proj.bias",
        T.ATTN_Q,
        lambda c: (c.q_rows,),
        suffix=".bias",
        transform=permute_rows("num_attention_heads"),
        required=False,
    ),
    _rows(
        _L + "self_attn.k_proj.bias",
        T.ATTN_K,
        lambda c: (c.kv_rows,),
        suffix=".bias",
        transform=permute_rows("num_key_value_heads"),
        required=False,
    ),
    _rows(_L + "self_attn.v_proj.bias", T.ATTN_V, lambda c: (c.kv_rows,), suffix=".bias", required=False),
    _rows(_L + "self_attn.o_proj.bias", T.ATTN_OUT, lambda c: (c.hidden_size,), suffix=".bias", required=False),
    _rows(_L + "post_attention_layernorm.weight", T.FFN_NORM, lambda c: (c.hidden_size,)),
    _rows(_L + "mlp.gate_proj.weight", T.FFN_GATE, lambda c: (c.intermediate_size, c.hidden_size)),
    _rows(_L + "mlp.up_proj.weight", T.FFN_UP, lambda c: (c.intermediate_size, c.hidden_size)),
    _rows(_L + "mlp.down_proj.weight", T.FFN_DOWN, lambda c: (c.hidden_size, c.intermediate_size)),
    _rows("model.norm.weight", T.OUTPUT_NORM, lambda c: (c.hidden_size,)),
    # absent when tie_word_embeddings: llama.cpp then uses token_embd for the output projection
    _rows("lm_head.weight", T.OUTPUT, lambda c: (c.vocab_size, c.hidden_size), required=False),
)

METADATA = (
    u32(K.LLM.CONTEXT_LENGTH, "max_position_embeddings"),
    u32(K.LLM.EMBEDDING_LENGTH, "hidden_size"),
    u32(K.LLM.BLOCK_COUNT, "num_hidden_layers"),
    u32(K.LLM.FEED_FORWARD_LENGTH, "intermediate_size"),
    u32(K.Attention.HEAD_COUNT, "num_attention_heads"),
    u32(K.Attention.HEAD_COUNT_KV, "num_key_value_heads"),
    f32(K.Rope.FREQ_BASE, "rope_theta"),
    f32(K.Attention.LAYERNORM_RMS_EPS, "rms_norm_eps"),
    u32(K.LLM.VOCAB_SIZE, "vocab_size"),
    u32(K.Rope.DIMENSION_COUNT, "head_dim"),
    u32(K.Attention.KEY_LENGTH, "head_dim"),
    u32(K.Attention.VALUE_LENGTH, "head_dim"),
)


def extra_metadata(writer: gguf.GGUFWriter, cfg: LlamaConfig) -> None:
    kind, rs = cfg.rope_type, cfg.rope_scaling or {}
    if kind == "llama3":
        writer.add_uint32(ORIGINAL_CTX_KEY, int(rs.get("original_max_position_embeddings", LLAMA3_ORIGINAL_CTX)))
    if kind in (None, "llama3"):  # llama3 is carried by the rope_freqs tensor
        return
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rs["factor"]))
        return
    raise ModelFormatError(f"rope_scaling type {kind!r} is not supported for llama (supported: linear, llama3)")


def llama3_rope_factors(cfg: LlamaConfig) -> np.ndarray:
    """Per-frequency divisors of Llama 3.1's rope scaling. -> (head_dim // 2,) float32."""
    rs = cfg.rope_scaling or {}
    factor = rs.get("factor", 8.0)
    low, high = rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
    old_ctx = rs.get("original_max_position_embeddings", 8192)
    freqs = 1.0 / (cfg.rope_theta ** (np.arange(0, cfg.head_dim, 2, dtype=np.float32) / cfg.head_dim))
    out = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def extra_tensors(cfg: LlamaConfig) -> Iterable[tuple[str, np.ndarray]]:
    if cfg.rope_type == "llama3":
        yield gguf.TENSOR_NAMES[T.ROPE_FREQS] + ".weight", llama3_rope_factors(cfg)


LLAMA3_ORIGINAL_CTX = 8192  # every Llama 3.x release; only the ratios to it reach the factors
# llama.cpp keeps llama3 scaling only as the rope_freqs tensor; we also keep the original context so
# that unpack gives back the very config.json (files from other converters get LLAMA3_ORIGINAL_CTX).
ORIGINAL_CTX_KEY = "edge_quantize.llama3_original_max_position_embeddings"


def llama3_rope_scaling(
    factors: np.ndarray, rope_theta: float, head_dim: int, ctx: int = LLAMA3_ORIGINAL_CTX
) -> dict[str, Any] | None:
    """Inverse of llama3_rope_factors: the rope_scaling dict that reproduces `factors`.

    factors (head_dim // 2,): 1 for short wavelengths, `factor` for long ones, and between them
    1 / ((1 - s) / factor + s) with s = (ctx / wavelen - low) / (high - low), linear in 1 / wavelen.
    Only low/ctx and high/ctx are determined, so ctx must be given (Llama 3's is 8192); the fit is exact
    for the band's points, and with fewer than two of them the band edges fall between the
    neighbouring frequencies (the factors are reproduced all the same)."""
    r = np.asarray(factors, dtype=np.float64).reshape(-1)  # (head_dim // 2,)
    factor = float(r.max())
    if factor <= 1.0 + 1e-6:
        return None
    inv_wavelen = 1.0 / (2 * math.pi * rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    band = (r > 1.0 + 1e-6) & (r < factor * (1 - 1e-6))
    if band.sum() >= 2:
        s = (1.0 / r[band] - 1.0 / factor) / (1.0 - 1.0 / factor)
        slope, intercept = np.polyfit(inv_wavelen[band], s, 1)  # s = slope / wavelen + intercept
        low = -intercept / slope * ctx
        high = low + ctx / slope
    else:  # no band to fit: put its edges between the unscaled and the fully scaled frequencies
        short = inv_wavelen[r <= 1.0 + 1e-6].min(initial=np.inf)  # longest unscaled wavelength
        long_ = inv_wavelen[r >= factor * (1 - 1e-6)].max(initial=0.0)  # shortest fully scaled one
        high, low = ctx * short * (1 - 1e-9), ctx * long_ * (1 + 1e-9)
    sig = lambda x: float(f"{x:.6g}")  # noqa: E731 - drop the float32 noise of the stored factors
    return {
        "rope_type": "llama3",
        "factor": sig(factor),
        "low_freq_factor": sig(low),
        "high_freq_factor": sig(high),
        "original_max_position_embeddings": ctx,
    }


def tensors_to_config(generated: dict[str, np.ndarray], config: dict[str, Any]) -> Iterable[str]:
    """Inverse of extra_tensors: rope_freqs back into config.json's llama3 rope_scaling."""
    name = gguf.TENSOR_NAMES[T.ROPE_FREQS] + ".weight"
    if name not in generated:
        return ()
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    ctx = int((config.get("rope_scaling") or {}).get("original_max_position_embeddings", LLAMA3_ORIGINAL_CTX))
    scaling = llama3_rope_scaling(generated[name], float(config.get("rope_theta", 10000.0)), int(head_dim), ctx)
    if scaling:
        config["rope_scaling"] = scaling
    return (name,)


def extra_config(kv: dict[str, Any], config: dict[str, Any]) -> None:
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]
    if kv.get(K.Rope.SCALING_TYPE.format(arch=arch)) == "linear":
        config["rope_scaling"] = {"rope_type": "linear", "factor": float(kv[K.Rope.SCALING_FACTOR.format(arch=arch)])}
    if ORIGINAL_CTX_KEY in kv:  # completed into the whole llama3 rope_scaling by tensors_to_config
        config["rope_scaling"] = {"original_max_position_embeddings": int(kv[ORIGINAL_CTX_KEY])}
    config.setdefault("hidden_act", "silu")


SPEC = ArchSpec(
    model_type="llama",
    arch=gguf.MODEL_ARCH.LLAMA,
    config=LlamaConfig,
    hf_architecture="LlamaForCausalLM",
    tensors=TENSORS,
    metadata=METADATA,
    extra_metadata=extra_metadata,
    extra_tensors=extra_tensors,
    extra_config=extra_config,
    tensors_to_config=tensors_to_config,
)
