"""Gemma 3 text models (HF `model_type` "gemma3_text", Gemma3ForCausalLM) -> GGUF "gemma3".

On top of Gemma 2 (gemma2.py: four norms per block, sliding-window layers, folded query scale):
- per-head RMSNorm on queries and keys (q_norm, k_norm; +1 like every Gemma norm). Because
  q_norm follows q_proj, a query scale that llama.cpp gets wrong is folded into q_norm here;
- no attention soft-cap (refused if set), an optional final soft-cap;
- two rotary bases: `rope_theta` for global layers and `rope_local_base_freq` for sliding ones
  (rope.freq_base_swa); linear rope scaling applies to global layers only, as in llama.cpp;
- sliding layers from `layer_types`, or every layer but each `sliding_window_pattern`-th (6);
- the embedding has more rows than the tokenizer has tokens (262208 vs 262145 for the released
  models): rows past the vocabulary are trimmed, so the GGUF vocabulary is the tokenizer's. The
  converter tells the config how many tokens there are (`n_vocab`) before planning.
The multimodal Gemma3ForConditionalGeneration ("gemma3") is refused with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import gguf

from edge.errors import ModelFormatError, UnsupportedArchitectureError

from .base import ArchSpec, TensorRule, Transform, f32, u32
from .gemma import IGNORED, L, core_tensors, norm
from .gemma import extra_config as gemma_extra_config
from .gemma2 import METADATA as GEMMA2_METADATA
from .gemma2 import Gemma2Config, read_swa_and_query_scale, write_swa_and_query_scale

T = gguf.MODEL_TENSOR
K = gguf.Keys
ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GEMMA3]
LAYERS_OF_27B = 62  # llama.cpp uses (hidden/heads)**-0.5 for a Gemma-3 with this many layers


@dataclass
class Gemma3Config(Gemma2Config):
    head_dim: int = 256
    max_position_embeddings: int = 131072
    rope_theta: float = 1_000_000.0
    rope_local_base_freq: float = 10_000.0
    rope_scaling: dict | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    sliding_window: int | None = 4096
    sliding_window_pattern: int = 6
    n_vocab: int = 0  # tokens in the tokenizer (<= vocab_size), set by the converter; 0: vocab_size

    LAYERS_OF_LARGE: ClassVar[int] = LAYERS_OF_27B

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Gemma3Config:
        if "text_config" in d and "hidden_size" not in d:
            raise UnsupportedArchitectureError(
                "this is a multimodal Gemma 3 checkpoint (Gemma3ForConditionalGeneration); only the "
                "text-only Gemma3ForCausalLM (model_type gemma3_text, e.g. gemma-3-270m, gemma-3-1b) converts"
            )
        return super().from_dict(d)

    def __post_init__(self) -> None:
        if self.attn_logit_softcapping:
            raise ModelFormatError("Gemma 3 with attn_logit_softcapping is not supported by llama.cpp")
        super().__post_init__()
        self.n_vocab = self.n_vocab or self.vocab_size
        if self.n_vocab > self.vocab_size:
            raise ModelFormatError(
                f"the tokenizer has {self.n_vocab} tokens but the embedding only {self.vocab_size} rows: "
                "tokenizer and config.json do not belong together"
            )

    def default_layer_type(self, i: int) -> str:
        return "full_attention" if (i + 1) % self.sliding_window_pattern == 0 else "sliding_attention"

    @property
    def rope_type(self) -> str | None:
        kind = (self.rope_scaling or {}).get("rope_type", (self.rope_scaling or {}).get("type"))
        return None if kind in (None, "default") else str(kind).lower()


TRIM_ROWS = Transform(
    forward=lambda w, cfg: w[: cfg.n_vocab],  # (n_vocab, n_embd)
    inverse=lambda w, cfg: w,  # the trimmed rows are gone for good
    out_shape=lambda shape, cfg: (cfg.n_vocab, *shape[1:]),
)
# HF q_norm weight w -> llama.cpp (1 + w) * fold (the query scale llama.cpp lacks, see gemma2.py)
Q_NORM = Transform(forward=lambda w, cfg: (w + 1.0) * cfg.query_fold, inverse=lambda w, cfg: w / cfg.query_fold - 1.0)

_CORE = core_tensors()
TENSORS = (
    TensorRule("model.embed_tokens.weight", T.TOKEN_EMBD, lambda c: (c.vocab_size, c.hidden_size), transform=TRIM_ROWS),
    *_CORE[1:],
    TensorRule(L + "self_attn.q_norm.weight", T.ATTN_Q_NORM, lambda c: (c.head_dim,), transform=Q_NORM),
    norm(L + "self_attn.k_norm.weight", T.ATTN_K_NORM, size="head_dim"),
    norm(L + "post_attention_layernorm.weight", T.ATTN_POST_NORM),
    norm(L + "pre_feedforward_layernorm.weight", T.FFN_NORM),
    norm(L + "post_feedforward_layernorm.weight", T.FFN_POST_NORM),
)

METADATA = tuple(r for r in GEMMA2_METADATA if r.attr not in ("vocab_size", "attn_logit_softcapping")) + (
    u32(K.LLM.VOCAB_SIZE, "n_vocab"),
    f32(K.Rope.FREQ_BASE_SWA, "rope_local_base_freq"),
)


def extra_metadata(writer: gguf.GGUFWriter, cfg: Gemma3Config) -> None:
    write_swa_and_query_scale(writer, cfg)
    if cfg.rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float((cfg.rope_scaling or {})["factor"]))
    elif cfg.rope_type is not None:
        raise ModelFormatError(f"rope_scaling type {cfg.rope_type!r} is not supported for Gemma 3 (supported: linear)")


def extra_config(kv: dict[str, Any], config: dict[str, Any]) -> None:
    gemma_extra_config(kv, config)
    if "n_vocab" in config:  # absent in files llama.cpp's converter wrote: unpack takes token_embd's rows
        config["vocab_size"] = config.pop("n_vocab")
    read_swa_and_query_scale(kv, config, ARCH, LAYERS_OF_27B)
    if kv.get(K.Rope.SCALING_TYPE.format(arch=ARCH)) == "linear":
        config["rope_scaling"] = {"rope_type": "linear", "factor": float(kv[K.Rope.SCALING_FACTOR.format(arch=ARCH)])}
    for key in ("final_logit_softcapping", "sliding_window", "rope_scaling"):
        config.setdefault(key, None)


SPEC = ArchSpec(
    model_type="gemma3_text",
    arch=gguf.MODEL_ARCH.GEMMA3,
    config=Gemma3Config,
    hf_architecture="Gemma3ForCausalLM",
    tensors=TENSORS,
    metadata=METADATA,
    extra_metadata=extra_metadata,
    extra_config=extra_config,
    ignored=IGNORED,
    trim_vocab=True,
)
