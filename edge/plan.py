"""Memory and speed planner, shared by `edge-quantize plan` and `edge serve`.

From a GGUF header or an HF config.json alone (no weights read) it predicts, per quantization type:
the file size (tensor by tensor, with llama.cpp's per-tensor type choices for the _S/_M/_L mixes,
src/llama-quant.cpp), the memory at run time (weights + KV cache + compute buffers), the
generation speed (bandwidth x efficiency / bytes read per token) and whether it fits a profile's
budget. `plan()` recommends a type and context or raises DoesNotFitError naming a way out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gguf
from gguf import GGMLQuantizationType as T

from edge.errors import DoesNotFitError, UnknownTypeError
from edge.model_shape import ModelShape, TensorInfo
from edge.profiles import GIB, Profile

# name -> default ggml type of the mix (llama_ftype_get_default_type in src/llama-quant.cpp)
FTYPES: dict[str, T] = {
    "F32": T.F32, "F16": T.F16, "BF16": T.BF16, "Q8_0": T.Q8_0, "Q6_K": T.Q6_K,
    "Q5_K_M": T.Q5_K, "Q5_K_S": T.Q5_K, "Q5_1": T.Q5_1, "Q5_0": T.Q5_0,
    "Q4_K_M": T.Q4_K, "Q4_K_S": T.Q4_K, "Q4_1": T.Q4_1, "Q4_0": T.Q4_0,
    "IQ4_NL": T.IQ4_NL, "IQ4_XS": T.IQ4_XS,
    "Q3_K_L": T.Q3_K, "Q3_K_M": T.Q3_K, "Q3_K_S": T.Q3_K, "Q2_K": T.Q2_K,
}
LADDER = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")
GGUF_ALIGNMENT = 32  # general.alignment default: each tensor's data starts on a 32-byte boundary
KV_TYPE_BYTES = 2  # llama.cpp's default K/V cache type is F16
N_UBATCH = 512  # llama_context_default_params().n_ubatch
KV_PAD = 256  # llama.cpp pads KV cache sizes to 256 cells
MIN_AUTO_CTX = 1024  # below this an automatic context is useless: refuse instead
SPEED_AT_TOKENS = 512  # predicted speed is for generation at this position (short prompts, as llama-bench tg)


def _name(t: gguf.MODEL_TENSOR) -> str:
    return gguf.TENSOR_NAMES[t].split(".")[-1]


ATTN_V_LIKE = (_name(gguf.MODEL_TENSOR.ATTN_V), _name(gguf.MODEL_TENSOR.ATTN_QKV))
FFN_DOWN, ATTN_OUT = _name(gguf.MODEL_TENSOR.FFN_DOWN), _name(gguf.MODEL_TENSOR.ATTN_OUT)
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
    return len(t.ne) >= 2 and t.name.endswith("weight") and "_norm.weight" not in t.name


def _more_bits(i: int, n: int) -> bool:
    """use_more_bits in src/llama-quant.cpp: first and last eighth, and every third layer between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fallback(t: T, ncols: int) -> T:
    """tensor_type_fallback: 256-block K-quants on rows that are not a multiple of 256."""
    block = gguf.GGML_QUANT_SIZES[t][0]
    if ncols % block == 0:
        return t
    t = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0,
         T.IQ4_XS: T.IQ4_NL}.get(t, t)
    return t if ncols % gguf.GGML_QUANT_SIZES[t][0] == 0 else T.F16


@dataclass
class _Counters:
    n_attn_v: int
    n_layer: int
    i_attn_v: int = 0
    i_ffn_down: int = 0


def _mix_type(ftype: str, cat: str, ncols: int, shape: ModelShape, c: _Counters) -> T:
    """llama_tensor_get_type_impl for the non-IQ1/2/3 mixes of dense (non-MoE) models."""
    new = FTYPES[ftype]
    if cat == "output" or (shape.tied_embeddings and cat == "token_embd"):
        if ncols % gguf.GGML_QUANT_SIZES[new][0] != 0:
            return T.Q8_0
        return new if new == T.Q8_0 else T.Q6_K
    if cat == "attn_v":
        i, n, gqa = c.i_attn_v, c.n_attn_v, shape.n_gqa
        c.i_attn_v += 1
        rules = {
            "Q2_K": T.Q4_K if gqa >= 4 else T.Q3_K,
            "Q3_K_M": T.Q5_K if i < 2 else T.Q4_K,
            "Q3_K_L": T.Q5_K,
            "IQ4_NL": T.Q5_K if gqa >= 4 else new,
            "IQ4_XS": T.Q5_K if gqa >= 4 else new,
            "Q4_K_M": T.Q6_K if _more_bits(i, n) else new,
            "Q5_K_M": T.Q6_K if _more_bits(i, n) else new,
            "Q4_K_S": T.Q5_K if i < 4 else new,
        }
        return rules.get(ftype, new)
    if cat == FFN_DOWN:
        i, n = c.i_ffn_down, c.n_layer
        c.i_ffn_down += 1
        rules = {
            "Q2_K": T.Q3_K,
            "Q3_K_M": T.Q5_K if i < n // 16 else T.Q4_K,
            "Q3_K_L": T.Q5_K,
            "Q4_K_M": T.Q6_K if _more_bits(i, n) else new,
            "IQ4_NL": T.Q5_K if i < n // 8 else new,
            "IQ4_XS": T.Q5_K if i < n // 8 else new,
            "Q5_K_M": T.Q6_K if _more_bits(i, n) else new,
            "Q4_K_S": T.Q5_K if i < n // 8 else new,
        }
        return rules.get(ftype, new)
    if cat == ATTN_OUT:
        return {"Q2_K": T.Q3_K, "Q3_K_M": T.Q4_K, "Q3_K_L": T.Q5_K}.get(ftype, new)
    return new


def tensor_types(shape: ModelShape, ftype: str) -> list[tuple[TensorInfo, T]]:
    """The ggml type llama-quantize (or the converter, for F16/BF16/F32) gives each tensor."""
    if ftype not in FTYPES:
        raise UnknownTypeError(f"unknown quantization type {ftype!r}; known: {', '.join(FTYPES)}")
    default = FTYPES[ftype]
    counters = _Counters(n_attn_v=sum(_category(t.name) == "attn_v" for t in shape.tensors), n_layer=shape.n_layer)
    out = []
    for t in shape.tensors:
        if not _quantizable(t):
            out.append((t, T.F32 if t.type in (T.F16, T.BF16, T.F32) else t.type))
        elif default in (T.F32, T.F16, T.BF16):
            out.append((t, default))
        else:
            new = _mix_type(ftype, _category(t.name), t.ne[0], shape, counters)
            out.append((t, _fallback(new, t.ne[0])))
    return out


def tensor_bytes(t: TensorInfo, qtype: T) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return t.n_elements // block * size


def weights_bytes(shape: ModelShape, ftype: str) -> tuple[int, int]:
    """(bytes of all tensors, bytes read per generated token: token_embd is a row lookup)."""
    total = read = 0
    for t, qtype in tensor_types(shape, ftype):
        size = tensor_bytes(t, qtype)
        total += size
        is_lookup = t.name == f"{TOKEN_EMBD}.weight" and not shape.tied_embeddings
        read += size // t.ne[1] if is_lookup else size
    return total, read


def file_bytes(shape: ModelShape, ftype: str) -> int:
    """Predicted .gguf file size: header (metadata, tensor infos) + aligned tensor data."""
    data = sum(-(-tensor_bytes(t, q) // GGUF_ALIGNMENT) * GGUF_ALIGNMENT for t, q in tensor_types(shape, ftype))
    return shape.header_bytes + data
