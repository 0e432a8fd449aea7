"""GGUF quantization types and the call into llama.cpp's own quantizer (llama_model_quantize).

Using llama.cpp's quantizer through llama-cpp-python makes our output byte-identical to
`llama-quantize` on the same input file. Outputs are written atomically (see gguf_out).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

import gguf

from edge.errors import BadRequestError, EdgeError, UnknownTypeError
from edge.fsio import atomic_file

F = gguf.LlamaFileType
Q = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class QuantType:
    name: str  # user-facing, e.g. "Q4_K_M"
    ftype: gguf.LlamaFileType  # what llama_model_quantize is asked for
    float_type: Q | None = None  # set for F32/F16/BF16: these can be written directly
    needs_imatrix: bool = False

    @property
    def is_float(self) -> bool:
        return self.float_type is not None

    @property
    def file_suffix(self) -> str:
        return self.name.lower()


_TABLE = (
    QuantType("F32", F.ALL_F32, Q.F32),
    QuantType("F16", F.MOSTLY_F16, Q.F16),
    QuantType("BF16", F.MOSTLY_BF16, Q.BF16),
    QuantType("Q8_0", F.MOSTLY_Q8_0),
    QuantType("Q6_K", F.MOSTLY_Q6_K),
    QuantType("Q5_K_M", F.MOSTLY_Q5_K_M),
    QuantType("Q5_K_S", F.MOSTLY_Q5_K_S),
    QuantType("Q4_K_M", F.MOSTLY_Q4_K_M),
    QuantType("Q4_K_S", F.MOSTLY_Q4_K_S),
    QuantType("Q4_0", F.MOSTLY_Q4_0),
    QuantType("Q4_1", F.MOSTLY_Q4_1),
    QuantType("Q3_K_M", F.MOSTLY_Q3_K_M),
    QuantType("Q3_K_L", F.MOSTLY_Q3_K_L),
    QuantType("Q2_K", F.MOSTLY_Q2_K),
    QuantType("IQ4_XS", F.MOSTLY_IQ4_XS),
    QuantType("IQ4_NL", F.MOSTLY_IQ4_NL),
    # llama.cpp refuses these without an importance matrix (tensor_requires_imatrix)
    QuantType("IQ2_XXS", F.MOSTLY_IQ2_XXS, needs_imatrix=True),
    QuantType("IQ2_XS", F.MOSTLY_IQ2_XS, needs_imatrix=True),
    QuantType("IQ2_S", F.MOSTLY_IQ2_S, needs_imatrix=True),
    QuantType("IQ3_XXS", F.MOSTLY_IQ3_XXS, needs_imatrix=True),
    QuantType("IQ1_S", F.MOSTLY_IQ1_S, needs_imatrix=True),
    QuantType("IQ1_M", F.MOSTLY_IQ1_M, needs_imatrix=True),
    QuantType("Q2_K_S", F.MOSTLY_Q2_K_S, needs_imatrix=True),
)
TYPES: dict[str, QuantType] = {t.name: t for t in _TABLE}
ALIASES = {"Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q3_K": "Q3_K_M"}  # as llama-quantize accepts them
FLOAT_PRECISION = ("F32", "F16", "BF16")  # best first: F16 keeps more mantissa than BF16


def parse_type(text: str) -> QuantType:
    """ "q4_k_m", "gguf:Q4_K_M" -> QuantType; UnknownTypeError lists the valid names."""
    name = text.strip().upper().removeprefix("GGUF:")
    name = ALIASES.get(name, name)
    if name not in TYPES:
        if text.strip().lower().startswith("onnx:"):
            raise UnknownTypeError(f"ONNX types ({text!r}) are not available yet; GGUF types: {valid_names()}")
        raise UnknownTypeError(f"unknown quantization type {text!r}; valid types: {valid_names()}")
    qtype = TYPES[name]
    if qtype.needs_imatrix:
        raise BadRequestError(
            f"{qtype.name} needs an importance matrix (--imatrix-text, coming); "
            f"without one use e.g. Q4_K_M, IQ4_XS or Q3_K_M"
        )
    return qtype


def parse_types(texts: list[str] | str) -> list[QuantType]:
    """A comma list (or list) of type names, validated all at once before any work starts."""
    if isinstance(texts, str):
        texts = [texts]
    names = [part for text in texts for part in text.split(",") if part.strip()]
    if not names:
        raise BadRequestError(f"no output type given; valid types: {valid_names()}")
    out: list[QuantType] = []
    for qtype in map(parse_type, names):
        if qtype not in out:
            out.append(qtype)
    return out


def valid_names() -> str:
    return ", ".join(t.name for t in _TABLE if not t.needs_imatrix)


def intermediate_type(requested: list[QuantType], source_float: str) -> QuantType:
    """The one high-precision file every requested type is made from.

    The most precise requested float type if any (so `f16,q4_k_m` quantizes Q4_K_M from the F16
    output itself), else the source's own float type (F32, F16 or BF16: no precision invented or lost).
    """
    floats = [t.name for t in requested if t.is_float]
    if source_float in floats:
        return TYPES[source_float]
    for name in FLOAT_PRECISION:
        if name in floats:
            return TYPES[name]
    return TYPES[source_float]


def quantize_file(
    src: Path,
    dst: Path,
    qtype: QuantType,
    *,
    force: bool = False,
    allow_requantize: bool = False,
    n_threads: int | None = None,
) -> None:
    """Run llama_model_quantize(src -> dst) with an atomic output."""
    import llama_cpp  # the native library loads here, not at import time

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(qtype.ftype)
    params.nthread = n_threads or os.cpu_count() or 1
    params.allow_requantize = allow_requantize
    with atomic_file(dst, force=force) as tmp:
        rc = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(tmp), ctypes.byref(params))
        if rc != 0:
            raise EdgeError(
                f"llama.cpp failed to quantize {src.name} to {qtype.name} (code {rc}); its log above says why"
            )
