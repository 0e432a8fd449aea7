"""BERT-family encoders (HF `model_type` "bert": all-MiniLM, bge-small, e5-small) -> GGUF "bert".

Post-LayerNorm encoder with learned absolute positions and token-type embeddings; llama.cpp runs
it non-causally and pools the last hidden states as `bert.pooling_type` says. The pooling comes
from sentence-transformers' `modules.json` -> `<Pooling module>/config.json` beside config.json
(mean, cls or last token); `unpack` writes those two files back. The vocabulary is WordPiece
(llama.cpp's "bert" tokenizer model, see quantize/vocab/wordpiece.py).

The layout is `BertModel`'s (no "bert." prefix); the pooler and position_ids are dropped, as
llama.cpp only embeds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from edge.errors import ModelFormatError

from .base import ArchConfig, ArchSpec, TensorRule, boolean, f32, u32

T = gguf.MODEL_TENSOR
K = gguf.Keys
P = gguf.PoolingType


@dataclass
class BertConfig(ArchConfig):
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    position_embedding_type: str = "absolute"
    pooling_type: int | None = None  # gguf.PoolingType, from the sentence-transformers files
    is_causal: bool = False  # an encoder: every token sees the whole input

    def __post_init__(self) -> None:
        if self.position_embedding_type != "absolute":
            raise ModelFormatError(
                f"position_embedding_type {self.position_embedding_type!r} is not supported "
                "(llama.cpp's bert runs learned absolute positions only)"
            )
        if self.hidden_act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
            raise ModelFormatError(f"hidden_act {self.hidden_act!r} is not supported (llama.cpp's bert uses GELU)")


def _rule(hf: str, tensor: gguf.MODEL_TENSOR, shape, suffix: str = ".weight") -> TensorRule:
    return TensorRule(hf=hf + suffix, tensor=tensor, shape=shape, suffix=suffix)


def _linear(hf: str, tensor: gguf.MODEL_TENSOR, rows: str, cols: str) -> tuple[TensorRule, ...]:
    """A dense layer: weight (rows, cols) and bias (rows,)."""
    return (
        _rule(hf, tensor, lambda c: (getattr(c, rows), getattr(c, cols))),
        _rule(hf, tensor, lambda c: (getattr(c, rows),), ".bias"),
    )


def _norm(hf: str, tensor: gguf.MODEL_TENSOR) -> tuple[TensorRule, ...]:
    """A LayerNorm: weight and bias, both (hidden_size,)."""
    return (
        _rule(hf, tensor, lambda c: (c.hidden_size,)),
        _rule(hf, tensor, lambda c: (c.hidden_size,), ".bias"),
    )


_L = "encoder.layer.{bid}."
TENSORS = (
    _rule("embeddings.word_embeddings", T.TOKEN_EMBD, lambda c: (c.vocab_size, c.hidden_size)),
    _rule("embeddings.token_type_embeddings", T.TOKEN_TYPES, lambda c: (c.type_vocab_size, c.hidden_size)),
    _rule("embeddings.position_embeddings", T.POS_EMBD, lambda c: (c.max_position_embeddings, c.hidden_size)),
    *_norm("embeddings.LayerNorm", T.TOKEN_EMBD_NORM),
    *_linear(_L + "attention.self.query", T.ATTN_Q, "hidden_size", "hidden_size"),
    *_linear(_L + "attention.self.key", T.ATTN_K, "hidden_size", "hidden_size"),
    *_linear(_L + "attention.self.value", T.ATTN_V, "hidden_size", "hidden_size"),
    *_linear(_L + "attention.output.dense", T.ATTN_OUT, "hidden_size", "hidden_size"),
    *_norm(_L + "attention.output.LayerNorm", T.ATTN_OUT_NORM),
    *_linear(_L + "intermediate.dense", T.FFN_UP, "intermediate_size", "hidden_size"),
    *_linear(_L + "output.dense", T.FFN_DOWN, "hidden_size", "intermediate_size"),
    *_norm(_L + "output.LayerNorm", T.LAYER_OUT_NORM),
)

METADATA = (
    u32(K.LLM.CONTEXT_LENGTH, "max_position_embeddings"),
    u32(K.LLM.EMBEDDING_LENGTH, "hidden_size"),
    u32(K.LLM.BLOCK_COUNT, "num_hidden_layers"),
    u32(K.LLM.FEED_FORWARD_LENGTH, "intermediate_size"),
    u32(K.Attention.HEAD_COUNT, "num_attention_heads"),
    f32(K.Attention.LAYERNORM_EPS, "layer_norm_eps"),
    boolean(K.Attention.CAUSAL, "is_causal"),
    u32(K.LLM.POOLING_TYPE, "pooling_type"),
    u32(K.Tokenizer.TOKEN_TYPE_COUNT, "type_vocab_size"),
)

# sentence-transformers' Pooling config flags, in the order llama.cpp's converter tries them
_POOLING_FLAGS = (
    ("pooling_mode_mean_tokens", P.MEAN),
    ("pooling_mode_cls_token", P.CLS),
    ("pooling_mode_lasttoken", P.LAST),
)
_POOLING_MODES = {"mean": P.MEAN, "cls": P.CLS, "lasttoken": P.LAST}
_POOLING_MODULE = "sentence_transformers.models.Pooling"
_POOLING_DIR = "1_Pooling"


def read_pooling(src: Path) -> dict[str, Any]:
    """{"pooling_type": gguf.PoolingType} from modules.json's Pooling module; {} without one."""
    modules = _json(src / "modules.json") or []
    path = next((m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
    if path is None:
        return {}
    pooling = _json(src / path / "config.json") or {}
    for flag, kind in _POOLING_FLAGS:
        if pooling.get(flag):
            return {"pooling_type": int(kind)}
    if pooling.get("pooling_mode") in _POOLING_MODES:
        return {"pooling_type": int(_POOLING_MODES[pooling["pooling_mode"]])}
    raise ModelFormatError(
        f"{src / path / 'config.json'}: pooling {pooling} is not supported by llama.cpp (supported: mean, cls, lasttoken)"
    )


def write_pooling(config: dict[str, Any]) -> dict[str, Any]:
    """Inverse of read_pooling for unpack: modules.json and the Pooling config (sentence-transformers)."""
    kind = config.pop("pooling_type", None)
    config.pop("is_causal", None)
    if kind is None or int(kind) not in {int(k) for _, k in _POOLING_FLAGS}:
        return {}
    flags = {flag: int(kind) == int(k) for flag, k in _POOLING_FLAGS}
    return {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": _POOLING_DIR, "type": _POOLING_MODULE},
        ],
        f"{_POOLING_DIR}/config.json": {"word_embedding_dimension": config["hidden_size"], **flags},
    }


def _json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{path} is not valid JSON ({exc})") from None


def extra_config(kv: dict[str, Any], config: dict[str, Any]) -> None:
    config.setdefault("hidden_act", "gelu")
    config.setdefault("position_embedding_type", "absolute")


SPEC = ArchSpec(
    model_type="bert",
    arch=gguf.MODEL_ARCH.BERT,
    config=BertConfig,
    hf_architecture="BertModel",
    tensors=TENSORS,
    metadata=METADATA,
    extra_config=extra_config,
    ignored=("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"),
    read_sidecar=read_pooling,
    write_sidecar=write_pooling,
)
