"""Parsing the requested GGUF types (the table is profiles.plan.types) and the call into llama.cpp's
own quantizer (llama_model_quantize).

Using llama.cpp's quantizer through llama-cpp-python makes our output byte-identical to
`llama-quantize` on the same input file. Outputs are written atomically (see gguf_out).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edge.errors import BadRequestError, EdgeError, UnknownTypeError
from edge.fsio import atomic_file
from profiles.plan.types import TYPES, QuantType, lookup

FLOAT_PRECISION = ("F32", "F16", "BF16")  # best first: F16 keeps more mantissa than BF16


def parse_type(text: str, *, have_imatrix: bool = False) -> QuantType:
    """ "q4_k_m", "gguf:Q4_K_M" -> QuantType; UnknownTypeError lists the valid names. A type that
    needs an importance matrix is refused unless one will be computed (`have_imatrix`)."""
    if text.strip().lower().startswith("onnx:"):
        raise UnknownTypeError(
            f"{text!r} is an ONNX type: `edge-quantize convert --to {text.strip()}` writes it; "
            f"llama.cpp's quantizer takes GGUF types: {valid_names()}"
        )
    qtype = lookup(text)
    if qtype.needs_imatrix and not have_imatrix:
        raise BadRequestError(
            f"{qtype.name} needs an importance matrix: add --imatrix-text FILE (UTF-8 text to compute it on); "
            f"without one use e.g. Q4_K_M, IQ4_XS or Q3_K_M"
        )
    return qtype


def parse_types(texts: list[str] | str, *, have_imatrix: bool = False) -> list[QuantType]:
    """A comma list (or list) of type names, validated all at once before any work starts."""
    if isinstance(texts, str):
        texts = [texts]
    parts = [part for text in texts for part in text.split(",") if part.strip()]
    if not parts:
        raise BadRequestError(f"no output type given; valid types: {valid_names()}")
    out: list[QuantType] = []
    for qtype in (parse_type(part, have_imatrix=have_imatrix) for part in parts):
        if qtype not in out:
            out.append(qtype)
    return out


def valid_names() -> str:
    """The names usable without an importance matrix, then those that need one."""
    plain = [t.name for t in TYPES.values() if not t.needs_imatrix]
    weighted = [t.name for t in TYPES.values() if t.needs_imatrix]
    return f"{', '.join(plain)}; with --imatrix-text also {', '.join(weighted)}"


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
    importance: Mapping[str, np.ndarray] | None = None,
    force: bool = False,
    allow_requantize: bool = False,
    n_threads: int | None = None,
) -> None:
    """Run llama_model_quantize(src -> dst) with an atomic output; `importance` (tensor name -> mean
    squared activation per input column, as an importance matrix holds) weights the rounding."""
    import llama_cpp  # the native library loads here, not at import time

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(qtype.ftype)
    params.nthread = n_threads or os.cpu_count() or 1
    params.allow_requantize = allow_requantize
    keep = None
    if importance is not None:
        entries, keep = _imatrix_array(importance)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    with atomic_file(dst, force=force) as tmp:
        rc = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(tmp), ctypes.byref(params))
        if rc != 0:
            raise EdgeError(
                f"llama.cpp failed to quantize {src.name} to {qtype.name} (code {rc}); its log above says why"
            )
    del keep  # the arrays params.imatrix points into live until llama.cpp is done


def _imatrix_array(means: Mapping[str, np.ndarray]):
    """A NULL-terminated llama_model_imatrix_data[] (and the objects that must stay alive with it)."""
    import llama_cpp

    entries = (llama_cpp.llama_model_imatrix_data * (len(means) + 1))()
    keep = []
    for i, (name, values) in enumerate(sorted(means.items())):
        values = np.ascontiguousarray(values, np.float32)
        raw = name.encode()
        keep += [values, raw]
        entries[i].name = raw
        entries[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = values.size
    entries[len(means)].name = None
    return entries, keep
