"""ONNX output types: `onnx:fp32`, `onnx:fp16`, `onnx:int8`, `onnx:int8_dyn`,
`onnx:int4[_bs<16|32|64|128>][_asym][_acc<0-4>]`.

- fp32: plain MatMul weights.
- fp16: weights stored as float16 (half the file) and widened once at load (Cast nodes that
  onnxruntime folds); the graph computes in fp32 so every CPU runs it.
- int8: weight-only: MatMulNBits with 8-bit blocks of 32 weights along K (one scale each) and float
  activations (accuracy level 1), what users mean by "INT8 costs little quality".
- int8_dyn: onnxruntime's dynamic quantization, for hardware that wants integer activations: int8
  weights with one scale per output column, activations quantized on the fly per call
  (DynamicQuantizeMatMul). Models with activation outliers (SmolLM2 has them) lose much more here.
  Written while the graph is built, not with quantize_dynamic on a saved fp32 graph (that holds the
  whole model in memory, 4x its size).
- int4: MatMulNBits (`_head8`: the output projection at 8 bits), 4-bit blocks of `block_size` weights along K, symmetric (default) or with zero
  points, `accuracy_level` (4 = int8 compute on CPU, the fast one; 1 = fp32) packed tensor by tensor
  with onnxruntime's own C++ quantizer while the graph is built, so the fp32 model never exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge.errors import UnknownTypeError

from .graph import WeightFormat

BLOCK_SIZES = (16, 32, 64, 128)
_INT4 = re.compile(r"^int4((?:_bs\d+|_asym|_sym|_acc\d|_head8)*)$")


@dataclass(frozen=True)
class OnnxType:
    name: str  # canonical, e.g. "int4_bs32" (also the folder suffix)
    weights: WeightFormat  # how the graph stores linear weights

    @property
    def label(self) -> str:
        return f"onnx:{self.name}"


def parse_onnx_type(text: str) -> OnnxType:
    raw = text.strip().lower()
    t = raw.removeprefix("onnx:")
    if t == "fp32":
        return OnnxType("fp32", WeightFormat("fp32"))
    if t == "fp16":
        return OnnxType("fp16", WeightFormat("fp16"))
    if t == "int8":
        return OnnxType("int8", WeightFormat("nbits", bits=8, block_size=32, accuracy_level=1, head_bits=8))
    if t == "int8_dyn":
        return OnnxType("int8_dyn", WeightFormat("int8"))
    m = _INT4.match(t)
    if not m:
        raise UnknownTypeError(
            f"unknown ONNX type {text!r}; choose onnx:fp32, onnx:fp16, onnx:int8, onnx:int8_dyn or "
            "onnx:int4 (options: _bs16/_bs32/_bs64/_bs128, _asym, _acc0.._acc4, _head8, e.g. onnx:int4_bs64_asym)"
        )
    block, sym, acc, head = 32, True, 4, 4
    for opt in re.findall(r"_(bs\d+|asym|sym|acc\d|head8)", m.group(1)):
        if opt.startswith("bs"):
            block = int(opt[2:])
            if block not in BLOCK_SIZES:
                raise UnknownTypeError(f"int4 block size {block} is not one of {BLOCK_SIZES} ({text!r})")
        elif opt.startswith("acc"):
            acc = int(opt[3:])
            if acc > 4:
                raise UnknownTypeError(f"accuracy level {acc} is not 0..4 ({text!r})")
        elif opt == "head8":
            head = 8
        else:
            sym = opt == "sym"
    name = (
        f"int4_bs{block}"
        + ("" if sym else "_asym")
        + ("" if acc == 4 else f"_acc{acc}")
        + ("_head8" if head == 8 else "")
    )
    return OnnxType(
        name, WeightFormat("nbits", bits=4, block_size=block, symmetric=sym, accuracy_level=acc, head_bits=head)
    )
