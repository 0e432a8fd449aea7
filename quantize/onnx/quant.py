"""ONNX output types: `onnx:fp32`, `onnx:fp16`, `onnx:int8[_bs<16|32|64>][_asym][_acc<0-4>]`,
`onnx:int8_dyn`, `onnx:int4[_bs<16|32|64|128>][_asym][_acc<0-4>][_head4][_rtn|_awq|_gptq]`.

- fp32: plain MatMul weights.
- fp16: weights stored as float16 (half the file) and widened once at load (Cast nodes that
  onnxruntime folds); the graph computes in fp32 so every CPU runs it.
- int8: weight-only: MatMulNBits with symmetric 8-bit blocks of 32 weights along K (one scale each),
  what users mean by "INT8 costs little quality". Accuracy level 4 by default: onnxruntime quantizes
  the activations to int8 per block of 32 inside the kernel (as llama.cpp's Q8_0 dot product does),
  the only level with a fast 8-bit CPU kernel; `_acc1` keeps float activations (slightly closer,
  far slower on CPU) and is what the calibration pass runs.
- int8_dyn: onnxruntime's dynamic quantization, for hardware that wants integer activations: int8
  weights with one scale per output column, activations quantized on the fly per call
  (DynamicQuantizeMatMul). Models with activation outliers (SmolLM2 has them) lose much more here.
  Written while the graph is built, not with quantize_dynamic on a saved fp32 graph (that holds the
  whole model in memory, 4x its size).
- int4: MatMulNBits, 4-bit blocks of `block_size` weights along K, symmetric (default) or with zero
  points, `accuracy_level` (4 = int8 compute on CPU, the fast one; 1 = fp32); the output projection
  stays at 8 bits as llama.cpp's Q4_0 keeps it at Q6_K/Q8_0 (`_head4`: 4 bits too), packed tensor by tensor
  tensor by tensor while the graph is built, so the fp32 model never exists. Each block's scale (and
  zero point) comes from a data-free search (quantize/onnx/blockquant.py: a grid of candidate scales,
  each refined by least squares, the one with the least squared error kept): no calibration text,
  the same file format and speed as round-to-nearest, less error.
- int4_rtn: onnxruntime's own C++ round-to-nearest quantizer; symmetric, it is GGUF Q4_0's grid
  (scale = the block's signed extreme / -8).
- int4_awq: calibrated (quantize/onnx/calib.py measures each linear's input activations on
  `--calib-text` with a temporary `int8_acc1` export): per-input-channel AWQ scales and block scales
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
INT8_BLOCK_SIZES = (16, 32, 64)  # onnxruntime 1.32 crashes running 8-bit blocks of 128 at accuracy level 4
_NBITS = re.compile(r"^int(4|8)((?:_[a-z0-9]+)*)$")
METHODS = ("search", "rtn", "awq", "gptq")  # how int4 blocks are chosen; "awq" and "gptq" need a calibration text
CALIBRATED = ("awq", "gptq")
INT4_DEFAULT = "search"  # data-free scale search; the type's name carries no method then
_HELP = (
    "choose onnx:fp32, onnx:fp16, onnx:int8, onnx:int8_dyn or onnx:int4 (int8/int4 options: "
    "_bs16/_bs32/_bs64 (int4 also _bs128), _asym, _acc0.._acc4; int4 also _head4 and a method, _rtn (onnxruntime's round-to-nearest), _awq or _gptq; "
    "e.g. onnx:int4_bs64_asym, onnx:int8_acc1)"
)


@dataclass(frozen=True)
class OnnxType:
    name: str  # canonical, e.g. "int4_bs32" (also the folder suffix)
    weights: WeightFormat  # how the graph stores linear weights

    @property
    def label(self) -> str:
        return f"onnx:{self.name}"

    @property
    def calibrated(self) -> bool:
        return self.weights.method in CALIBRATED


def parse_onnx_type(text: str) -> OnnxType:
    raw = text.strip().lower()
    t = raw.removeprefix("onnx:")
    if t == "fp32":
        return OnnxType("fp32", WeightFormat("fp32"))
    if t == "fp16":
        return OnnxType("fp16", WeightFormat("fp16"))
    if t == "int8_dyn":
        return OnnxType("int8_dyn", WeightFormat("int8"))
    m = _NBITS.match(t)
    if not m:
        raise UnknownTypeError(f"unknown ONNX type {text!r}; {_HELP}")
    bits = int(m.group(1))
    block, sym, acc, head = 32, True, 4, 8
    method = INT4_DEFAULT if bits == 4 else "rtn"
    for opt in m.group(2).split("_")[1:]:
        if opt in METHODS and bits == 4:
            method = opt
        elif opt.startswith("bs") and opt[2:].isdigit():
            block = int(opt[2:])
            sizes = BLOCK_SIZES if bits == 4 else INT8_BLOCK_SIZES
            if block not in sizes:
                raise UnknownTypeError(f"int{bits} block size {block} is not one of {sizes} ({text!r})")
        elif opt.startswith("acc") and opt[3:].isdigit():
            acc = int(opt[3:])
            if acc > 4:
                raise UnknownTypeError(f"accuracy level {acc} is not 0..4 ({text!r})")
        elif opt in ("head4", "head8") and bits == 4:
            head = int(opt[4:])
        elif opt in ("sym", "asym"):
            sym = opt == "sym"
        else:
            raise UnknownTypeError(
                f"unknown int{bits} option or method {opt!r} in {text!r}; {_HELP}"
                + ("; int4 methods: rtn, awq, gptq (awq and gptq need --calib-text)" if bits == 4 else "")
            )
    options = ("" if sym else "_asym") + ("" if acc == 4 else f"_acc{acc}")
    if bits == 8:  # the output projection is at 8 bits like every other linear
        name = "int8" + ("" if block == 32 else f"_bs{block}") + options
    else:
        name = (
            f"int4_bs{block}"
            + options
            + ("_head4" if head == 4 else "")
            + ("" if method == INT4_DEFAULT else f"_{method}")
        )
    wf = WeightFormat(
        "nbits", bits=bits, block_size=block, symmetric=sym, accuracy_level=acc, head_bits=head, method=method
    )
    return OnnxType(name, wf)
