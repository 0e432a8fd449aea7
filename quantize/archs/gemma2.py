"""Gemma 2 (HF `model_type` "gemma2") -> GGUF "gemma2".

On top of Gemma (gemma.py: norms +1, tied embeddings, no q/k permutation):
- four norms per block: input (attn_norm), post-attention (attn_post_norm), pre-feed-forward
  (ffn_norm) and post-feed-forward (ffn_post_norm);
- attention and final logit soft-caps, the sliding window and which layers use it (HF
  `layer_types`; older configs alternate sliding/global starting with sliding);
- `query_pre_attn_scalar`: HF scales queries by query_pre_attn_scalar**-0.5, llama.cpp by
  head_dim**-0.5 (or (hidden/heads)**-0.5 for the 46-layer 27B), reading no key for it. When the two
  differ, the ratio is folded into the query projection (exact: rope is linear) and the original
  value is kept under QUERY_SCALAR_KEY so that unpack can undo it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gguf

from .base import ArchSpec, Transform, f32, u32
from .gemma import IGNORED, GemmaConfig, L, core_tensors, norm
from .gemma import METADATA as GEMMA_METADATA
from .gemma import extra_config as gemma_extra_config

T = gguf.MODEL_TENSOR
K = gguf.Keys

# Not a llama.cpp key (llama.cpp derives the query scale itself); written only when a scale had
# to be folded into the weights, so that unpack can restore config.json and the weights.
QUERY_SCALAR_KEY = "edge_quantize.query_pre_attn_scalar"
LAYERS_OF_27B = 46  # llama.cpp uses (hidden/heads)**-0.5 for a Gemma-2 with this many layers


@dataclass
class Gemma2Config(GemmaConfig):
    query_pre_attn_scalar: float = 256.0
    attn_logit_softcapping: float | None = 50.0
    final_logit_softcapping: float | None = 30.0
    sliding_window: int | None = 4096
    layer_types: list[str] = field(default_factory=list)  # empty or null: default_layer_type per layer

    LAYERS_OF_LARGE: ClassVar[int] = LAYERS_OF_27B  # see query_fold

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.layer_types:
            self.layer_types = [self.default_layer_type(i) for i in range(self.num_hidden_layers)]
        self.query_fold = query_fold(self, self.LAYERS_OF_LARGE)

    def default_layer_type(self, i: int) -> str:
        return "sliding_attention" if (i + 1) % 2 else "full_attention"

    @property
    def swa_layers(self) -> list[bool]:
        return [t == "sliding_attention" for t in self.layer_types]


def query_fold(cfg: Any, layers_of_large: int) -> float:
    """HF's query scale / llama.cpp's query scale (1.0 when llama.cpp already does the right thing)."""
    head = cfg.hidden_size / cfg.num_attention_heads if cfg.num_hidden_layers == layers_of_large else cfg.head_dim
    ratio = math.sqrt(head / float(cfg.query_pre_attn_scalar))
    return 1.0 if math.isclose(ratio, 1.0, rel_tol=1e-9) else ratio


SCALE_Q = Transform(forward=lambda w, cfg: w * cfg.query_fold, inverse=lambda w, cfg: w / cfg.query_fold)

TENSORS = core_tensors(q_transform=SCALE_Q) + (
    norm(L + "post_attention_layernorm.weight", T.ATTN_POST_NORM),
    norm(L + "pre_feedforward_layernorm.weight", T.FFN_NORM),
    norm(L + "post_feedforward_layernorm.weight", T.FFN_POST_NORM),
)

METADATA = GEMMA_METADATA + (
    f32(K.LLM.ATTN_LOGIT_SOFTCAPPING, "attn_logit_softcapping"),
    f32(K.LLM.FINAL_LOGIT_SOFTCAPPING, "final_logit_softcapping"),
    u32(K.Attention.SLIDING_WINDOW, "sliding_window"),
)


def write_swa_and_query_scale(writer: gguf.GGUFWriter, cfg: Any) -> None:
    """Which layers slide (one bool per layer) and, if folded, the original query scalar."""
    if cfg.sliding_window:
        writer.add_sliding_window_pattern(cfg.swa_layers)
    if cfg.query_fold != 1.0:
        writer.add_float32(QUERY_SCALAR_KEY, float(cfg.query_pre_attn_scalar))


def read_swa_and_query_scale(kv: dict[str, Any], config: dict[str, Any], arch: str, layers_of_large: int) -> None:
    """Inverse of `write_swa_and_query_scale` for unpack (config.json fields)."""
    pattern = kv.get(K.Attention.SLIDING_WINDOW_PATTERN.format(arch=arch))
    if isinstance(pattern, list):
        config["layer_types"] = ["sliding_attention" if p else "full_attention" for p in pattern]
    if QUERY_SCALAR_KEY in kv:
        config["query_pre_attn_scalar"] = float(kv[QUERY_SCALAR_KEY])
    else:  # llama.cpp's own rule was right: restore the value it implies
        heads, layers = config["num_attention_heads"], config["num_hidden_layers"]
        large = layers == layers_of_large
        config["query_pre_attn_scalar"] = config["hidden_size"] // heads if large else config.get("head_dim", 256)


def extra_config(kv: dict[str, Any], config: dict[str, Any]) -> None:
    gemma_extra_config(kv, config)
    read_swa_and_query_scale(kv, config, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GEMMA2], LAYERS_OF_27B)
    for key in ("attn_logit_softcapping", "final_logit_softcapping", "sliding_window"):
        config.setdefault(key, None)  # absent in the GGUF = off (HF defaults would turn them on)


SPEC = ArchSpec(
    model_type="gemma2",
    arch=gguf.MODEL_ARCH.GEMMA2,
    config=Gemma2Config,
    hf_architecture="Gemma2ForCausalLM",
    tensors=TENSORS,
    metadata=METADATA,
    extra_metadata=write_swa_and_query_scale,
    extra_config=extra_config,
    ignored=IGNORED,
)
