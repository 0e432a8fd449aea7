"""ONNX output types: `onnx:fp32`, `onnx:fp16`, `onnx:int8`, `onnx:int8_dyn`,
`onnx:int4[_bs<16|32|64|128>][_asym][_acc<0-4>][_head8][_awq]`.

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
  Symmetric round-to-nearest blocks are GGUF Q4_0's grid (scale = the block's signed extreme / -8).
- int4_awq: calibrated (quantize/onnx/calib.py measures each linear's input activations on
  `--calib-text` with a temporary fp32 export): per-input-channel AWQ scales and block scales
  chosen to minimise the activation-weighted error (quantize/onnx/blockquant.py); the input of each
  linear is divided by its scales (one Mul) before MatMulNBits.
- int4_gptq: the same scaling, then GPTQ with each linear input's Hessian (sum of x x^T): the input
  rows are quantized in order, each row's rounding error pushed onto the rows not yet quantized.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge.errors import UnknownTypeError

from .graph import WeightFormat

BLOCK_SIZES = (16, 32, 64, 128)
_INT4 = re.compile(r"^int4((?:_bs\d+|_asym|_sym|_acc\d|_head8|_[a-z]+)*)$")
METHODS = ("rtn", "awq", "gptq")  # how int4 blocks are chosen; "awq" and "gptq" need a calibration text


@dataclass(frozen=True)
class OnnxType:
    name: str  # canonical, e.g. "int4_bs32" (also the folder suffix)
    weights: WeightFormat  # how the graph stores linear weights

    @property
    def label(self) -> str:
        return f"onnx:{self.name}"

    @property
    def calibrated(self) -> bool:
        return self.weights.method != "rtn"


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
    block, sym, acc, head, method = 32, True, 4, 4, "rtn"
    for opt in re.findall(r"_(bs\d+|asym|sym|acc\d|head8|[a-z]+)", m.group(1)):
        if opt in METHODS:
            method = opt
        elif opt.startswith("bs") and opt[2:].isdigit():
            block = int(opt[2:])
            if block not in BLOCK_SIZES:
                raise UnknownTypeError(f"int4 block size {block} is not one of {BLOCK_SIZES} ({text!r})")
        elif opt.startswith("acc"):
            acc = int(opt[3:])
            if acc > 4:
                raise UnknownTypeError(f"accuracy level {acc} is not 0..4 ({text!r})")
        elif opt == "head8":
            head = 8
        elif opt in ("sym", "asym"):
            sym = opt == "sym"
        else:
            raise UnknownTypeError(
                f"unknown int4 option or method {opt!r} in {text!r}; methods: {', '.join(METHODS)} "
                "(e.g. onnx:int4_gptq, which needs --calib-text)"
            )
    name = (
        f"int4_bs{block}"
        + ("" if sym else "_asym")
        + ("" if acc == 4 else f"_acc{acc}")
        + ("_head8" if head == 8 else "")
        + ("" if method == "rtn" else f"_{method}")
    )
    wf = WeightFormat(
        "nbits", bits=4, block_size=block, symmetric=sym, accuracy_level=acc, head_bits=head, method=method
    )
    return OnnxType(name, wf)
