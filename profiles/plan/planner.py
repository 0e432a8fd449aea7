"""Memory and speed planner, shared by `edge-quantize plan` and `edge serve`.

From a GGUF header or an HF config.json alone (no weights read) it predicts, per quantization type
(profiles.plan.types): the file size (tensor by tensor, with llama.cpp's per-tensor type choices for
the _S/_M/_L and IQ mixes, src/llama-quant.cpp), the memory at run time (weights + KV cache + compute buffers), the
generation speed and whether it fits a profile's budget. `plan()` recommends a type and context or
raises DoesNotFitError naming a way out.

Generation speed comes from `edge bench`'s calibration of this device when there is one
(profiles.calibration, fitted by `SpeedModel`): "measured" for a file of the very types measured,
"estimated" for other types and models. Without one it is the profile's nominal bandwidth x
efficiency / bytes read per token, an "upper_bound": on small CPUs the kernels, not the memory,
set the pace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.errors import DoesNotFitError
from edge.lightimport import gguf_constants
from profiles.calibration import Record, model_key
from profiles.plan.shape import ModelShape, TensorInfo
from profiles.plan.types import TYPES, QuantType, lookup
from profiles.profile import GIB, Profile

gguf = gguf_constants()  # the enums and tables only: no reader, writer or numpy (edge.lightimport)
if TYPE_CHECKING:  # the same classes, named for the type checker (gguf_constants() is a plain module to it)
    from gguf.constants import MODEL_TENSOR
    from gguf.constants import GGMLQuantizationType as T
else:
    T = gguf.GGMLQuantizationType

AS_IS = "AS_IS"  # not a quantization: the tensor types of an existing GGUF file
LADDER = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")
GGUF_ALIGNMENT = 32  # general.alignment default: each tensor's data starts on a 32-byte boundary
KV_TYPE_BYTES = 2  # llama.cpp's default K/V cache type is F16
N_UBATCH = 512  # llama_context_default_params().n_ubatch
KV_PAD = 256  # llama.cpp pads KV cache sizes to 256 cells
MIN_AUTO_CTX = 1024  # below this an automatic context is useless: refuse instead
SPEED_AT_TOKENS = 512  # predicted speed is for generation at this position (short prompts, as llama-bench tg)


def _name(t: MODEL_TENSOR) -> str:
    return gguf.TENSOR_NAMES[t].split(".")[-1]


# category_is_attn_v in src/llama-quant.cpp: V, fused QKV and MLA's KV_B projections
ATTN_V_LIKE = tuple(
    _name(t) for t in (gguf.MODEL_TENSOR.ATTN_V, gguf.MODEL_TENSOR.ATTN_QKV, gguf.MODEL_TENSOR.ATTN_KV_B)
)
FFN_DOWN, ATTN_OUT = _name(gguf.MODEL_TENSOR.FFN_DOWN), _name(gguf.MODEL_TENSOR.ATTN_OUT)
ATTN_K, ATTN_Q = _name(gguf.MODEL_TENSOR.ATTN_K), _name(gguf.MODEL_TENSOR.ATTN_Q)
TOKEN_EMBD, OUTPUT = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD], gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.OUTPUT]


def _category(name: str) -> str:
    base = name.removesuffix(".weight")
    if base == OUTPUT:
        return "output"
    if base == TOKEN_EMBD:
        return "token_embd"
    leaf = base.split(".")[-1]
    return "attn_v" if leaf in ATTN_V_LIKE else leaf


def _quantizable(t: TensorInfo) -> bool:
    """tensor_allows_quantization: 2D+ weights that are not norms."""
    return len(t.shape) >= 2 and t.name.endswith("weight") and "_norm.weight" not in t.name


def _more_bits(i: int, n: int) -> bool:
    """use_more_bits in src/llama-quant.cpp: first and last eighth, and every third layer between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fallback(t: T, ncols: int) -> T:
    """tensor_type_fallback: 256-block types on rows that are not a multiple of 256."""
    block = gguf.GGML_QUANT_SIZES[t][0]
    if ncols % block == 0:
        return t
    t = _FALLBACK.get(t, t)
    return t if ncols % gguf.GGML_QUANT_SIZES[t][0] == 0 else T.F16


_FALLBACK = {
    **dict.fromkeys((T.IQ1_S, T.IQ1_M, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ4_XS), T.IQ4_NL),
    **dict.fromkeys((T.Q2_K, T.Q3_K), T.Q4_0),
    T.Q4_K: T.Q5_0,
    T.Q5_K: T.Q5_1,
    T.Q6_K: T.Q8_0,
}
# the 1-2 bit IQ mixes share one set of rules in llama_tensor_get_type_impl
IQ_LOW = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M")


@dataclass
class _Counters:
    n_attn_v: int
    n_layer: int
    i_attn_v: int = 0
    i_ffn_down: int = 0


def _mix_type(q: QuantType, cat: str, ncols: int, shape: ModelShape, c: _Counters, imatrix: bool) -> T:
    """llama_tensor_get_type_impl for dense (non-MoE, non-Falcon) models, one tensor at a time."""
    ftype, new = q.name, q.ggml_type
    if cat == "output" or (shape.tied_embeddings and cat == "token_embd"):
        if ncols % gguf.GGML_QUANT_SIZES[new][0] != 0:
            return T.Q8_0
        if ftype in IQ_LOW or ftype == "IQ3_XXS":
            return T.Q5_K
        return new if new == T.Q8_0 else T.Q6_K
    if cat == "token_embd":
        rules = {"IQ2_XXS": T.Q2_K, "IQ2_XS": T.Q2_K, "IQ1_S": T.Q2_K, "IQ1_M": T.Q2_K, "IQ2_S": T.IQ3_S}
        return {**rules, "IQ3_XXS": T.IQ3_S}.get(ftype, new)
    if ftype in IQ_LOW:
        return _iq_low_type(ftype, new, cat, shape, c)
    if cat == "attn_v":
        i, n, gqa = c.i_attn_v, c.n_attn_v, shape.n_gqa
        c.i_attn_v += 1
        rules = {
            "Q2_K": T.Q4_K if gqa >= 4 else T.Q3_K,
            "Q2_K_S": T.Q4_K if gqa >= 4 else new,
            "IQ3_XXS": T.Q4_K if gqa >= 4 else T.IQ3_XXS if imatrix else T.IQ3_S,
            "Q3_K_M": T.Q5_K if i < 2 else T.Q4_K,
            "Q3_K_L": T.Q5_K,
            "IQ4_NL": T.Q5_K if gqa >= 4 else new,
            "IQ4_XS": T.Q5_K if gqa >= 4 else new,
            "Q4_K_M": T.Q6_K if _more_bits(i, n) else new,
            "Q5_K_M": T.Q6_K if _more_bits(i, n) else new,
            "Q4_K_S": T.Q5_K if i < 4 else new,
        }
        return rules.get(ftype, new)
    if cat in (ATTN_K, ATTN_Q):
        return T.IQ2_S if ftype == "IQ3_XXS" else new
    if cat == FFN_DOWN:
        i, n = c.i_ffn_down, c.n_layer
        c.i_ffn_down += 1
        first = i < n // 8
        rules = {
            "Q2_K": T.Q3_K,
            "Q2_K_S": T.Q4_K if first else new,
            "Q3_K_M": T.Q5_K if i < n // 16 else T.Q4_K,
            "Q3_K_L": T.Q5_K,
            "Q4_K_M": T.Q6_K if _more_bits(i, n) else new,
            "Q5_K_M": T.Q6_K if _more_bits(i, n) else new,
            "Q4_K_S": T.Q5_K if first else new,
        }
        if not imatrix:  # without an importance matrix the first eighth of ffn_down gets more bits
            rules |= {"IQ3_XXS": T.Q4_K if first else T.Q3_K, "IQ4_NL": T.Q5_K if first else new}
            rules |= {"IQ4_XS": T.Q5_K if first else new}
        else:  # with one, Q4_0/Q5_0 guard the first eighth against outliers
            rules |= {"Q4_0": T.Q4_1 if first else new, "Q5_0": T.Q5_1 if first else new}
        return rules.get(ftype, new)
    if cat == ATTN_OUT:
        return {"Q2_K": T.Q3_K, "IQ3_XXS": T.IQ3_S, "Q3_K_M": T.Q4_K, "Q3_K_L": T.Q5_K}.get(ftype, new)
    return new


def _iq_low_type(ftype: str, new: T, cat: str, shape: ModelShape, c: _Counters) -> T:
    """The IQ1/IQ2 branch of llama_tensor_get_type_impl: attn_v, the first ffn_down and attn_output get more bits."""
    more = T.IQ3_S if ftype == "IQ2_S" else T.Q2_K
    if cat == "attn_v":
        c.i_attn_v += 1
        return T.Q4_K if shape.n_gqa >= 4 else more
    if cat == FFN_DOWN:
        i = c.i_ffn_down
        c.i_ffn_down += 1
        return more if i < c.n_layer // 8 else new
    if cat == ATTN_OUT:
        return {"IQ1_S": T.IQ2_XXS, "IQ1_M": T.IQ2_XXS, "IQ2_S": T.IQ3_S}.get(ftype, new)
    return new


def tensor_types(shape: ModelShape, ftype: str, imatrix: bool | None = None) -> list[tuple[TensorInfo, T]]:
    """The ggml type llama-quantize (or the converter, for F16/BF16/F32) gives each tensor.

    `AS_IS` keeps the types the GGUF header declares: what serving that very file costs.
    `imatrix` (None: exactly when the type needs one) changes a few of llama.cpp's choices."""
    if ftype == AS_IS:
        return [(t, T(t.ggml_type)) for t in shape.tensors]
    q = lookup(ftype)
    imatrix = q.needs_imatrix if imatrix is None else imatrix
    counters = _Counters(n_attn_v=sum(_category(t.name) == "attn_v" for t in shape.tensors), n_layer=shape.n_layer)
    out: list[tuple[TensorInfo, T]] = []
    for t in shape.tensors:
        if not _quantizable(t):
            out.append((t, T.F32 if t.ggml_type in (T.F16, T.BF16, T.F32) else T(t.ggml_type)))
        elif q.is_float:
            out.append((t, q.ggml_type))
        else:
            new = _mix_type(q, _category(t.name), t.shape[0], shape, counters, imatrix)
            out.append((t, _fallback(new, t.shape[0])))
    return out


def tensor_bytes(t: TensorInfo, qtype: T) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return t.n_elements // block * size


def weights_bytes(shape: ModelShape, ftype: str, imatrix: bool | None = None) -> tuple[int, int]:
    """(bytes of all tensors, bytes read per generated token: token_embd is a row lookup)."""
    return _sizes(shape, ftype, imatrix)[:2]


def file_bytes(shape: ModelShape, ftype: str, imatrix: bool | None = None) -> int:
    """Predicted .gguf file size: header (metadata, tensor infos) + aligned tensor data."""
    return _sizes(shape, ftype, imatrix)[2]


@lru_cache(maxsize=256)
def _sizes(shape: ModelShape, ftype: str, imatrix: bool | None) -> tuple[int, int, int]:
    total = read = data = 0
    for t, qtype in tensor_types(shape, ftype, imatrix):
        size = tensor_bytes(t, qtype)
        total += size
        data += -(-size // GGUF_ALIGNMENT) * GGUF_ALIGNMENT
        is_lookup = t.name == f"{TOKEN_EMBD}.weight" and not shape.tied_embeddings
        read += size // t.shape[1] if is_lookup else size
    return total, read, shape.header_bytes + data


# --- run-time memory ------------------------------------------------------------------------

MIB = 2**20


@dataclass(frozen=True)
class Backend:
    """How a runtime sets up llama.cpp's context, and what its process holds beyond llama.cpp's buffers."""

    name: str
    swa_full: bool  # sliding-window layers get the whole context too (llama_context_default_params: true)
    outputs_per_slot: int | None  # logits rows reserved per slot; None: a whole ubatch (llama.cpp's default)
    process_bytes: int  # interpreter, libraries, threads: resident before and while decoding
    vocab_bytes_per_token: int  # llama.cpp's in-memory vocabulary (token texts, maps, merges)

    def runtime_bytes(self, shape: ModelShape) -> int:
        return self.process_bytes + self.vocab_bytes_per_token * shape.n_vocab


# `edge serve`'s GGUF backend (edge/engine/llamacpp.py): llama.cpp's context defaults (so swa_full
# stays true, unlike llama-server) except n_outputs_max = n_parallel, one logits row per slot.
# Its process, measured on the bundled models (tests/profiles/test_plan.py::test_peak_rss_*):
#   27 MiB   Python + edge + libllama/ggml before a model is loaded (VmRSS);
#   +7..16   once decoding ran (scheduler thread, malloc arenas, flash-attention scratch);
#   vocabulary: +17 MiB for SmolLM2 (49k BPE tokens and merges, 354 B/token), +42 MiB for Gemma-3
#   (262k tokens, 166 B/token); 250 B/token keeps both processes within 3 %.
EDGE_LLAMA_CPP = Backend(
    "edge (llama.cpp)", swa_full=True, outputs_per_slot=1, process_bytes=36 * MIB, vocab_bytes_per_token=250
)


def _pad(n: int, to: int = KV_PAD) -> int:
    return -(-n // to) * to


def kv_cells(shape: ModelShape, n_ctx: int, n_parallel: int = 1, swa_full: bool = False) -> list[int]:
    """KV cells per layer for `n_parallel` slots of `n_ctx` each. Every slot is its own stream
    (kv_unified off): n_ctx cells, or on sliding-window layers min(n_ctx, n_swa + n_ubatch) padded
    to 256 (llama_kv_cache_iswa); `swa_full` gives those layers n_ctx too."""
    swa = _pad(min(n_ctx, shape.n_swa + N_UBATCH))
    per_slot = [swa if (is_swa and not swa_full) else n_ctx for is_swa in shape.swa_layers or (False,) * shape.n_layer]
    return [cells * n_parallel for cells in per_slot]


def kv_bytes(shape: ModelShape, n_ctx: int, n_parallel: int = 1, swa_full: bool = False) -> int:
    # per cell and layer: K (n_head_kv * head_dim_k) + V (n_head_kv * head_dim_v), F16
    per_cell = shape.n_head_kv * (shape.head_dim_k + shape.head_dim_v) * KV_TYPE_BYTES
    return sum(kv_cells(shape, n_ctx, n_parallel, swa_full)) * per_cell


def compute_bytes(
    shape: ModelShape, n_ctx: int, flash_attn: bool = True, n_outputs: int = N_UBATCH, swa_full: bool = False
) -> int:
    """llama.cpp's CPU compute buffer, reserved for a full ubatch at a full context (fitted on the
    bundled models, tests/profiles/test_plan.py). Its allocator reuses memory, so it is the larger of
    two peaks: the output (n_outputs logits rows and the last hidden states, f32) and a layer (the
    ubatch's FFN intermediates and residuals, f32, plus an f16 KQ mask of n_ubatch x KV cells per
    attention kind; without flash attention the f32 KQ scores of all heads when they are larger)."""
    output = 4 * (n_outputs * shape.n_vocab + 2 * N_UBATCH * shape.n_embd)
    cells = kv_cells(shape, n_ctx, 1, swa_full)
    kinds = set(zip(cells, shape.swa_layers or (False,) * len(cells)))  # (cells, is_swa): one mask each
    layer = N_UBATCH * 4 * (3 * shape.n_ff + 4 * shape.n_embd) + N_UBATCH * 2 * sum(c for c, _ in kinds)
    if not flash_attn:
        layer = max(layer, N_UBATCH * 4 * ((shape.n_head + 1) * n_ctx + 2 * shape.n_ff))
    return max(output, layer)


@dataclass(frozen=True)
class Estimate:
    """One quantization type at one context (per slot) on one profile."""

    type: str
    n_ctx: int
    file_bytes: int
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int  # reserved by llama.cpp for a full ubatch at a full context
    allocated_bytes: int  # weights + KV + compute + output: what llama.cpp reports when it loads
    runtime_bytes: int  # the serving process beyond llama.cpp's buffers (Backend.runtime_bytes)
    memory_bytes: int  # allocated + runtime: what the process needs; decides "fits"
    resident_bytes: int  # expected peak RSS once the context is full (untouched logits rows excluded)
    tokens_per_s: float  # predicted generation speed at SPEED_AT_TOKENS
    budget_bytes: int
    fits: bool
    speed_basis: str = "upper_bound"  # "measured" (edge bench ran this file) | "estimated" | "upper_bound"

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["memory_gib"] = round(self.memory_bytes / GIB, 3)
        out["tokens_per_s"] = round(self.tokens_per_s, 1)
        return out


def estimate(
    shape: ModelShape,
    ftype: str,
    n_ctx: int,
    profile: Profile,
    *,
    budget_bytes: int | None = None,
    n_parallel: int = 1,
    swa_full: bool | None = None,
    flash_attn: bool = True,
    backend: Backend = EDGE_LLAMA_CPP,
    speed_model: SpeedModel | None = None,
) -> Estimate:
    """`n_ctx` is per slot; `swa_full` None takes the backend's setting; `speed_model` (from this
    device's calibration, `SpeedModel.for_profile`) replaces the nominal speed."""
    swa_full = backend.swa_full if swa_full is None else swa_full
    weights, read = weights_bytes(shape, ftype)
    kv = kv_bytes(shape, n_ctx, n_parallel, swa_full)
    n_outputs = N_UBATCH if backend.outputs_per_slot is None else backend.outputs_per_slot * n_parallel
    compute = compute_bytes(shape, n_ctx, flash_attn, n_outputs, swa_full)
    output = shape.n_vocab * 4 * n_parallel  # logits buffer as reserved at load: one row per sequence
    allocated = weights + kv + compute + output
    runtime = backend.runtime_bytes(shape)
    # rows of a reserved logits block that are never written (we read one row per slot) stay untouched
    untouched = compute - compute_bytes(shape, n_ctx, flash_attn, n_parallel, swa_full) if flash_attn else 0
    kv_read = kv_bytes(shape, min(n_ctx, SPEED_AT_TOKENS), 1, swa_full)
    if speed_model is not None:
        speed, basis = speed_model.tokens_per_s(shape, ftype, kv_read)
    else:
        speed, basis = profile.memory.bandwidth_gbs * 1e9 * profile.runtime.efficiency / (read + kv_read), "upper_bound"
    budget = profile.budget_bytes if budget_bytes is None else budget_bytes
    fits = (allocated + runtime) * (1 + profile.runtime.headroom) <= budget
    return Estimate(
        ftype,
        n_ctx,
        file_bytes(shape, ftype),
        weights,
        kv,
        compute,
        allocated,
        runtime,
        allocated + runtime,
        allocated + runtime - untouched,
        speed,
        budget,
        fits,
        basis,
    )


# --- generation speed from a calibration ------------------------------------------------------

# Bytes-equivalent cost per byte of weights in llama.cpp's CPU matrix-vector kernels (generation,
# one token): types whose dot product is a plain widen-and-multiply stream at the memory's pace
# (1.0); the others spend extra instructions per block unpacking scales, minimums or high bits
# and run slower per byte than memory could deliver. Fitted with bench/plan_speed.py on x86-64
# (AVX-512, llama.cpp 0c1e570); `edge bench` on a device scales all of them through the bandwidth.
KERNEL_COST = {
    T.F32: 1.0,
    T.F16: 1.0,
    T.BF16: 1.0,
    T.Q8_0: 1.0,
    T.Q4_0: 1.0,
    T.IQ4_NL: 1.0,
}
DEFAULT_KERNEL_COST = 1.6  # Q4_1, Q5_0/1, the K-quants and IQ types
LAYER_S = 45e-6  # per layer and token: norms, attention, the graph's dispatch (2 threads, fitted as above)


def bytes_by_type(shape: ModelShape, ftype: str) -> dict[str, int]:
    """Weight bytes read per generated token, per ggml type (token_embd's row lookup excluded)."""
    return dict(_bytes_by_type(shape, ftype))


@lru_cache(maxsize=256)
def _bytes_by_type(shape: ModelShape, ftype: str) -> tuple[tuple[str, int], ...]:
    out: dict[str, int] = {}
    for t, qtype in tensor_types(shape, ftype):
        if t.name == f"{TOKEN_EMBD}.weight" and not shape.tied_embeddings:
            continue
        out[qtype.name] = out.get(qtype.name, 0) + tensor_bytes(t, qtype)
    return tuple(sorted(out.items()))


def cost_bytes(by_type: dict[str, int]) -> float:
    return sum(n * KERNEL_COST.get(T[name], DEFAULT_KERNEL_COST) for name, n in by_type.items())


@dataclass(frozen=True)
class SpeedModel:
    """Seconds per generated token = kernel-weighted bytes / bandwidth + layers x per-layer time,
    with the bandwidth (and, from two or more measurements of one model, the per-layer time) fitted
    to this device's `edge bench` records. Records of the same model are preferred; without them
    every record of the profile contributes (the median bandwidth)."""

    records: tuple[Record, ...]

    @classmethod
    def for_profile(cls, records: list[Record], profile: str) -> SpeedModel | None:
        mine = tuple(r for r in records if r.profile == profile and r.parallel == 1)
        return cls(mine) if mine else None

    def fit(self, shape: ModelShape) -> tuple[float, float, list[Record]]:
        """(bandwidth bytes/s, per-layer seconds, the records used) for `shape`."""
        key = model_key(shape)
        same = [r for r in self.records if r.model == key]
        used = same or list(self.records)
        points = [(cost_bytes(r.bytes_by_type) + r.kv_read_bytes, r.n_layer, 1 / r.tg_tps) for r in used]
        layer_s = LAYER_S
        distinct = {round(c) for c, _, _ in points}
        if same and len(distinct) >= 2:  # two unknowns, two or more equations: least squares
            layer_s = _fit_layer_time(points) or LAYER_S
        bws = sorted(c / max(t - n * layer_s, 1e-9) for c, n, t in points)
        return bws[len(bws) // 2], layer_s, used

    def tokens_per_s(self, shape: ModelShape, ftype: str, kv_read: int) -> tuple[float, str]:
        by_type = bytes_by_type(shape, ftype)
        key = model_key(shape)
        for r in self.records:
            if r.model == key and r.bytes_by_type == by_type:
                return r.tg_tps, "measured"
        bw, layer_s, _ = self.fit(shape)
        return 1 / ((cost_bytes(by_type) + kv_read) / bw + shape.n_layer * layer_s), "estimated"


def _fit_layer_time(points: list[tuple[float, int, float]]) -> float | None:
    """Least squares of t = c / bw + n x layer_s over (c, n, t); None when it is not positive."""
    # unknowns x = (1/bw, layer_s): normal equations of the 2x2 system
    scc = sum(c * c for c, _, _ in points)
    scn = sum(c * n for c, n, _ in points)
    snn = sum(n * n for _, n, _ in points)
    sct = sum(c * t for c, _, t in points)
    snt = sum(n * t for _, n, t in points)
    det = scc * snn - scn * scn
    if abs(det) < 1e-12 * scc * snn:
        return None
    inv_bw = (sct * snn - scn * snt) / det
    layer_s = (scc * snt - scn * sct) / det
    return layer_s if inv_bw > 0 and layer_s > 0 else None


# --- the plan -------------------------------------------------------------------------------


@dataclass
class Plan:
    source: str
    profile: str
    budget_bytes: int
    n_ctx_train: int
    estimates: list[Estimate]  # the ladder, at the chosen context
    recommended: Estimate
    reasons: list[str] = field(default_factory=list)
    calibration: list[Record] = field(default_factory=list)  # the edge bench records the speeds rest on

    @property
    def speed_upper_bound(self) -> bool:
        """No calibration: every tokens/s is the nominal ceiling, not a prediction."""
        return not self.calibration

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "profile": self.profile,
            "budget_bytes": self.budget_bytes,
            "n_ctx_train": self.n_ctx_train,
            "recommended": self.recommended.to_dict(),
            "estimates": [e.to_dict() for e in self.estimates],
            "reasons": self.reasons,
            "speed": {
                "upper_bound": self.speed_upper_bound,
                "calibration": [
                    {k: getattr(r, k) for k in ("file", "type", "threads", "tg_tps", "pp_tps", "measured_at")}
                    for r in self.calibration
                ],
            },
        }


def largest_context(shape: ModelShape, ftype: str, profile: Profile, cap: int, **kw) -> int:
    """The largest context (a multiple of 256, at most `cap`) whose estimate fits; 0 if none."""
    lo, hi = 0, cap // KV_PAD
    while lo < hi:  # memory grows monotonically with the context: bisect on multiples of 256
        mid = (lo + hi + 1) // 2
        if estimate(shape, ftype, mid * KV_PAD, profile, **kw).fits:
            lo = mid
        else:
            hi = mid - 1
    return lo * KV_PAD


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def _refuse(shape, profile, n_ctx, preferred, kw) -> DoesNotFitError:
    need = estimate(shape, preferred[-1], n_ctx, profile, **kw)
    budget = need.budget_bytes / (1 + profile.runtime.headroom)
    plain = [t for t in dict.fromkeys(LADDER + tuple(TYPES)) if not TYPES[t].needs_imatrix]
    ways = [t for t in plain if estimate(shape, t, n_ctx, profile, **kw).fits]
    ctx = max(((largest_context(shape, t, profile, n_ctx, **kw), t) for t in preferred), default=(0, ""))
    outs = []
    if ways:
        outs.append(f"try {ways[0]}")
    if ctx[0] >= 256:
        outs.append(f"--ctx {ctx[0]} with {ctx[1]}")
    outs.append("a smaller model" if not outs else "or --force to load anyway")
    return DoesNotFitError(
        f"{Path(shape.source).name or 'model'} needs {_gib(need.memory_bytes)} as {need.type} at --ctx {n_ctx} "
        f"(weights {_gib(need.weights_bytes)}, KV {_gib(need.kv_bytes)}, compute {_gib(need.compute_bytes)}, "
        f"runtime {_gib(need.runtime_bytes)}), "
        f"budget {_gib(int(budget))} on {profile.name} (+{profile.runtime.headroom:.0%} headroom); " + "; ".join(outs)
    )


def plan(
    shape: ModelShape,
    profile: Profile,
    *,
    n_ctx: int | None = None,
    budget_bytes: int | None = None,
    types: tuple[str, ...] | None = None,
    n_parallel: int | None = None,
    swa_full: bool | None = None,
    flash_attn: bool = True,
    speed_model: SpeedModel | None = None,
) -> Plan:
    """Recommend the first of the profile's preferred types that fits, at `n_ctx` or, when none is
    given, at the largest context that fits up to min(model's own, profile's context).
    Raises DoesNotFitError (message: the numbers and a way out) when nothing preferred fits."""
    kw: dict[str, Any] = dict(
        budget_bytes=budget_bytes,
        n_parallel=n_parallel or profile.runtime.parallel,
        swa_full=swa_full,
        flash_attn=flash_attn,
        speed_model=speed_model,
    )
    preferred = types or profile.runtime.quant_types
    cap = min(shape.n_ctx_train, profile.runtime.context)
    want = n_ctx or cap
    choice = next((t for t in preferred if estimate(shape, t, want, profile, **kw).fits), None)
    reasons = []
    if choice is None and n_ctx is None:
        fallback = [(largest_context(shape, t, profile, cap, **kw), t) for t in preferred]
        best = next(((c, t) for c, t in fallback if c >= MIN_AUTO_CTX), None)
        if best:
            want, choice = best
            reasons.append(f"no preferred type fits at {cap} tokens; {choice} fits up to {want}")
    if choice is None:
        raise _refuse(shape, profile, want, preferred, kw)
    ladder = [estimate(shape, t, want, profile, **kw) for t in dict.fromkeys(LADDER + tuple(preferred))]
    rec = estimate(shape, choice, want, profile, **kw)
    reasons.append(
        f"{choice}: first of the profile's preferred types {list(preferred)} that fits "
        f"({_gib(rec.memory_bytes)} + {profile.runtime.headroom:.0%} headroom <= {_gib(rec.budget_bytes)})"
    )
    used = speed_model.fit(shape)[2] if speed_model is not None else []
    if speed_model is None:
        reasons.append(
            "tokens/s: an upper bound from the profile's nominal bandwidth; `edge bench` measures this device"
        )
    else:
        what = ", ".join(f"{Path(r.file).name or r.type} {r.tg_tps:.0f} t/s" for r in used)
        reasons.append(f"tokens/s: from edge bench on this device ({what}); other types estimated from it")
    return Plan(shape.source, profile.name, rec.budget_bytes, shape.n_ctx_train, ladder, rec, reasons, used)
