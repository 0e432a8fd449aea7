"""The decoder graph every architecture shares, built from a per-architecture `DecoderSpec`.

Per block (onnxruntime contrib ops, as onnxruntime-genai's builder emits them):

    x ─ SkipSimplifiedLayerNorm(prev, residual, attn_norm) ─ MatMul qkv (packed) ─ [q/k RMSNorm]
      ─ GroupQueryAttention(do_rotary, KV cache shared in place) ─ MatMul o ─ [post norm]
      ─ SkipSimplifiedLayerNorm(·, residual, ffn_norm) ─ MatMul gate_up ─ act(gate)*up ─ MatMul down
      ─ [post norm] ─ next block

Graph interface (B = batch, S = new tokens, T = KV buffer length chosen by the runtime):
  inputs  input_ids int64 (B, S); attention_mask int64 (B, L) of ones, L = tokens in the cache after
          this step (the graph derives GroupQueryAttention's seqlens_k = L - 1 and
          total_sequence_length = L from it, as onnxruntime-genai's models do, so onnxruntime-genai
          runs the folder); past_key_values.{i}.key/.value float (B, n_kv, T, head_dim)
  outputs logits float (B, S, vocab); present.{i}.key/.value, same shape as past: the runtime binds
          each present to its past buffer, so GroupQueryAttention writes the new rows in place
          (past_present_share_buffer) and nothing is copied per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from onnx import TensorProto

from .graph import MS, Graph
from .rope import Rope

FLOAT = TensorProto.FLOAT


@dataclass(frozen=True)
class Weights:
    """HF tensor names ("{bid}" = block index). Tuples are concatenated along the output rows."""

    qkv: tuple[str, ...]  # (q, k, v) or (qkv_proj,)
    o: str
    gate_up: tuple[str, ...]  # (gate, up) or (gate_up_proj,)
    down: str
    attn_norm: str = "model.layers.{bid}.input_layernorm.weight"
    ffn_norm: str = "model.layers.{bid}.post_attention_layernorm.weight"
    post_attn_norm: str | None = None  # Gemma 2/3: norm of the attention output before the add
    post_ffn_norm: str | None = None
    q_norm: str | None = None  # Gemma 3: per-head RMSNorm of q and k
    k_norm: str | None = None
    qkv_bias: tuple[str, ...] = ()  # optional (absent tensors are skipped)
    o_bias: str | None = None
    embed: str = "model.embed_tokens.weight"
    final_norm: str = "model.norm.weight"
    lm_head: str = "lm_head.weight"  # absent = tied to the embedding


@dataclass(frozen=True)
class Layout:
    """The numbers of one model (from its config), per block where they vary."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int
    vocab: int  # logits rows kept (Gemma 3 drops out-of-vocabulary rows)
    eps: float
    ropes: list[Rope]  # per block
    long_ropes: list[Rope] | None = None  # Phi-3 longrope: used once total length > long_after
    long_after: int = 0
    windows: list[int] = field(default_factory=list)  # per block: sliding window (tokens), 0 = none
    attn_scale: float = 0.0  # 0 = 1/sqrt(head_dim)
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    norm_offset: float = 0.0  # Gemma: RMSNorm multiplies by (1 + w)
    embed_scale: float = 1.0  # Gemma: embeddings times sqrt(hidden)
    act: str = "silu"  # "silu" | "gelu_tanh"


@dataclass(frozen=True)
class DecoderSpec:
    model_type: str
    weights: Weights
    layout: Callable[[Any, int], Layout]  # (arch config, vocab rows kept) -> Layout


def kv_names(i: int) -> tuple[str, str, str, str]:
    return (f"past_key_values.{i}.key", f"past_key_values.{i}.value", f"present.{i}.key", f"present.{i}.value")


class Loader:
    """Checkpoint tensors as float32 numpy, with optional ones and concatenation."""

    def __init__(self, ckpt, seen: set[str]):
        self.ckpt, self.seen = ckpt, seen

    def has(self, name: str) -> bool:
        return name in self.ckpt.refs

    def get(self, name: str) -> np.ndarray:
        self.seen.add(name)
        return np.asarray(self.ckpt.load(name), dtype=np.float32)

    def cat(self, names: tuple[str, ...], bid: int) -> np.ndarray:
        return np.concatenate([self.get(n.format(bid=bid)) for n in names], axis=0)


def build(spec: DecoderSpec, lay: Layout, ld: Loader, g: Graph, on_block=lambda i: None) -> None:
    w = spec.weights
    g.input("input_ids", TensorProto.INT64, ["batch", "seq"])
    g.input("attention_mask", TensorProto.INT64, ["batch", "total"])
    _lengths(g)
    kv_shape = ["batch", lay.n_kv_heads, "kv_len", lay.head_dim]
    for i in range(lay.n_layers):
        past_k, past_v, pres_k, pres_v = kv_names(i)
        g.input(past_k, FLOAT, kv_shape)
        g.input(past_v, FLOAT, kv_shape)
    caches = _rope_caches(g, lay)
    x = _embed(g, lay, ld, w)
    residual = x
    h: str | None = None  # the block input, after the first block's norm
    for i in range(lay.n_layers):
        norm = _norm_weight(g, ld, w.attn_norm.format(bid=i), lay)
        if h is None:
            h = g.rms_norm(x, norm, lay.eps)
        else:
            h, residual = g.skip_rms_norm(h, residual, norm, lay.eps)
        a = _attention(g, lay, ld, w, i, h, caches[i])
        a = _post_norm(g, ld, w.post_attn_norm, i, lay, a)
        h, residual = g.skip_rms_norm(a, residual, _norm_weight(g, ld, w.ffn_norm.format(bid=i), lay), lay.eps)
        m = _mlp(g, lay, ld, w, i, h)
        h = _post_norm(g, ld, w.post_ffn_norm, i, lay, m)
        on_block(i)
    assert h is not None, "a decoder has at least one block"
    h, _ = g.skip_rms_norm(h, residual, _norm_weight(g, ld, w.final_norm, lay), lay.eps)
    out = None if lay.final_softcap else "logits"
    logits = g.shared_linear("lm_head", h, out=out)  # a tied embedding's blocks, made by _embed
    if logits is None:
        head = ld.get(w.lm_head) if ld.has(w.lm_head) else ld.get(w.embed)
        logits = g.linear("lm_head", h, head[: lay.vocab], out=out, wf=g.wf.head())
    if lay.final_softcap:
        cap = g.const("final_softcap", np.array(lay.final_softcap, dtype=np.float32))
        t = g.op("Tanh", [g.op("Div", [logits, cap])[0]])[0]
        g.op("Mul", [t, cap], outputs=["logits"])
    g.output("logits", FLOAT, ["batch", "seq", lay.vocab])
    for i in range(lay.n_layers):
        g.output(kv_names(i)[2], FLOAT, kv_shape)
        g.output(kv_names(i)[3], FLOAT, kv_shape)


def _lengths(g: Graph) -> None:
    """GroupQueryAttention's length inputs from the mask, as onnxruntime-genai's models derive them:
    seqlens_k (B,) int32 = ones in the mask - 1, total_sequence_length () int32 = the mask's width."""
    ones = g.op("ReduceSum", ["attention_mask", g.const("axis_1", np.array([1], dtype=np.int64))], keepdims=0)[0]
    last = g.op("Sub", [ones, g.const("one_i64", np.array(1, dtype=np.int64))])[0]
    g.op("Cast", [last], outputs=["seqlens_k"], to=TensorProto.INT32)
    width = g.op("Gather", [g.op("Shape", ["attention_mask"])[0], g.const("index_1", np.array(1, dtype=np.int64))])[0]
    g.op("Cast", [width], outputs=["total_sequence_length"], to=TensorProto.INT32)


def _embed(g: Graph, lay: Layout, ld: Loader, w: Weights) -> str:
    table = ld.get(w.embed)[: lay.vocab]  # (vocab, hidden)
    if not ld.has(w.lm_head):  # tied to the output projection: its quantized blocks serve both
        x = g.gather_rows("lm_head", table, "input_ids", g.wf.head())
    else:  # a table of its own, in 8-bit blocks (round-to-nearest: the rows are only looked up)
        x = g.gather_rows(
            "embed_tokens", table, "input_ids", replace(g.wf, bits=8, symmetric=True, method="rtn"), shared=False
        )
    if x is None and g.wf.kind == "fp32":
        x = g.op("Gather", [g.const("embed_tokens", table), "input_ids"])[0]
    elif x is None:  # half the bytes; only the gathered rows are widened
        x = g.op("Gather", [g.const("embed_tokens", table.astype(np.float16)), "input_ids"])[0]
        x = g.op("Cast", [x], to=FLOAT)[0]
    if lay.embed_scale != 1.0:
        x = g.op("Mul", [x, g.const("embed_scale", np.array(lay.embed_scale, dtype=np.float32))])[0]
    return x


def _norm_weight(g: Graph, ld: Loader, name: str, lay: Layout) -> str:
    return g.const(name, ld.get(name) + np.float32(lay.norm_offset))


def _post_norm(g: Graph, ld: Loader, template: str | None, i: int, lay: Layout, x: str) -> str:
    if template is None:
        return x
    return g.rms_norm(x, _norm_weight(g, ld, template.format(bid=i), lay), lay.eps)


def _rope_caches(g: Graph, lay: Layout) -> list[tuple[str, str]]:
    """Per block (cos, sin) value names; identical ropes share one pair of initializers."""
    names: dict[tuple[Rope, Rope | None], tuple[str, str]] = {}
    out = []
    for i, rope in enumerate(lay.ropes):
        long = lay.long_ropes[i] if lay.long_ropes else None
        key = (rope, long)
        if key not in names:
            n = len(names)
            cos, sin = rope.caches()
            pair = (g.const(f"cos_cache_{n}", cos), g.const(f"sin_cache_{n}", sin))
            if long is not None:  # Phi-3 longrope: switch to the long factors past the original context
                lcos, lsin = long.caches()
                limit = g.const("long_after", np.array(lay.long_after, dtype=np.int32))
                use_long = g.op("Greater", ["total_sequence_length", limit])[0]
                pair = (
                    g.op("Where", [use_long, g.const(f"cos_cache_long_{n}", lcos), pair[0]])[0],
                    g.op("Where", [use_long, g.const(f"sin_cache_long_{n}", lsin), pair[1]])[0],
                )
            names[key] = pair
        out.append(names[key])
    return out


def _attention(g: Graph, lay: Layout, ld: Loader, w: Weights, i: int, h: str, cache: tuple[str, str]) -> str:
    p = f"layers.{i}.attn"
    qkv_w = ld.cat(w.qkv, i)  # (q + 2 kv rows, hidden)
    bias_names = tuple(b for b in w.qkv_bias if ld.has(b.format(bid=i)))
    bias = ld.cat(bias_names, i) if bias_names else None
    qkv = g.linear(p + ".qkv", h, qkv_w, bias)
    q_rows, kv_rows = lay.n_heads * lay.head_dim, lay.n_kv_heads * lay.head_dim
    if w.q_norm:  # per-head RMSNorm on q and k before rotary (Gemma 3): unpacked inputs
        assert w.k_norm is not None, "q_norm and k_norm come together"
        q, k, v = g.op(
            "Split", [qkv, g.const("split_qkv", np.array([q_rows, kv_rows, kv_rows], dtype=np.int64))], 3, axis=-1
        )
        q = _head_norm(g, ld, w.q_norm.format(bid=i), lay, q, lay.n_heads)
        k = _head_norm(g, ld, w.k_norm.format(bid=i), lay, k, lay.n_kv_heads)
        qkv_inputs = [q, k, v]
    else:
        qkv_inputs = [qkv, "", ""]
    past_k, past_v, pres_k, pres_v = kv_names(i)
    attrs: dict[str, Any] = dict(
        num_heads=lay.n_heads,
        kv_num_heads=lay.n_kv_heads,
        do_rotary=1,
        rotary_interleaved=0,
        scale=float(lay.attn_scale),
    )
    if lay.windows and lay.windows[i]:
        attrs["local_window_size"] = int(lay.windows[i])  # same count as HF (checked against transformers)
    if lay.attn_softcap:
        attrs["softcap"] = float(lay.attn_softcap)
    a = g.op(
        "GroupQueryAttention",
        [*qkv_inputs, past_k, past_v, "seqlens_k", "total_sequence_length", cache[0], cache[1]],
        domain=MS,
        outputs=[f"/{p}/out", pres_k, pres_v],
        **attrs,
    )[0]
    o_bias = ld.get(w.o_bias.format(bid=i)) if w.o_bias and ld.has(w.o_bias.format(bid=i)) else None
    return g.linear(p + ".o", a, ld.get(w.o.format(bid=i)), o_bias)


def _head_norm(g: Graph, ld: Loader, name: str, lay: Layout, x: str, heads: int) -> str:
    shape = g.const(f"shape_heads_{heads}", np.array([0, 0, heads, lay.head_dim], dtype=np.int64))
    flat = g.const("shape_flat", np.array([0, 0, -1], dtype=np.int64))
    y = g.rms_norm(g.op("Reshape", [x, shape])[0], _norm_weight(g, ld, name, lay), lay.eps)
    return g.op("Reshape", [y, flat])[0]


def _mlp(g: Graph, lay: Layout, ld: Loader, w: Weights, i: int, h: str) -> str:
    p = f"layers.{i}.mlp"
    gate_up = g.linear(p + ".gate_up", h, ld.cat(w.gate_up, i))  # (B, S, 2 * intermediate)
    gate, up = g.op("Split", [gate_up], 2, axis=-1, num_outputs=2)
    if lay.act == "silu":
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate])[0]])[0]
    else:  # gelu with the tanh approximation (gelu_pytorch_tanh)
        act = g.op("FastGelu", [gate], domain=MS)[0]
    return g.linear(p + ".down", g.op("Mul", [act, up])[0], ld.get(w.down.format(bid=i)))
