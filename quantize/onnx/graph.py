"""A small ONNX graph builder: nodes, initializers and the onnxruntime contrib ops we use.

Only what the decoder graphs need: every op is one method, so a graph file reads as a list of
operations. Weights become initializers once (by name); linear layers are MatMul (fp32 / fp16
weights) or MatMulNBits (block-quantized int4/int8, packed by onnxruntime's own C++ kernel).
Op layouts follow onnxruntime's contrib-op documentation (com.microsoft domain):
GroupQueryAttention, MatMulNBits, SkipSimplifiedLayerNormalization, SimplifiedLayerNormalization.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .weights import SMALL, WeightSink

OPSET = 21
MS = "com.microsoft"


@dataclass(frozen=True)
class WeightFormat:
    """How linear weights are stored: "fp32", "fp16" (Cast to fp32 at load) or n-bit blocks."""

    kind: str = "fp32"  # "fp32" | "fp16" | "int8" (dynamic) | "nbits"
    bits: int = 4
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4  # MatMulNBits: 0 default, 1 fp32, 2 fp16, 3 bf16, 4 int8 compute
    head_bits: int = 4  # bits of the output projection (8 keeps it near-lossless)
    # "rtn": onnxruntime's round-to-nearest; "search": data-free scale search; "awq", "gptq": calibrated
    method: str = "rtn"

    def head(self) -> WeightFormat:
        """The output projection's format: n-bit types keep it (the most quantization-sensitive matrix,
        tied to the embedding in small models) at 8 bits unless `_head4` asks for 4: MatMulNBits bits=8,
        same block size (llama.cpp's Q4_0 likewise writes it as Q6_K or Q8_0)."""
        return replace(self, bits=8) if self.kind == "nbits" and self.head_bits == 8 else self


class Graph:
    """`sink` (quantize/onnx/weights.py): initializers of 1 KiB or more are written out as they come,
    so a graph never holds the model's weights; without one they stay in `inits` (tests, tiny graphs)."""

    def __init__(
        self, name: str, wf: WeightFormat, sink: WeightSink | None = None, stats: dict[str, np.ndarray] | None = None
    ):
        self.name = name
        self.wf = wf
        self.sink = sink
        self.stats = stats or {}  # linear name -> mean squared input activation per channel (K,): "awq"
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, TensorProto] = {}
        self._written: set[str] = set()  # names the sink wrote inline (not in `inits`)
        # linear name -> ((its blocks, input scales), format), quantized early by gather_rows
        self._shared: dict[str, tuple] = {}
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._n = 0

    # -- plumbing ------------------------------------------------------------------------------
    def _out(self, op: str, n: int = 1) -> list[str]:
        self._n += 1
        return [f"/{op}_{self._n}/out{i}" for i in range(n)]

    def op(self, op: str, inputs: list[str], n_out: int = 1, *, domain: str = "", outputs=None, **attrs) -> list[str]:
        outs = outputs or self._out(op, n_out)
        self.nodes.append(
            helper.make_node(op, inputs, outs, name=f"{op}_{self._n}_{len(self.nodes)}", domain=domain or None, **attrs)
        )
        return outs

    def const(self, name: str, array: np.ndarray) -> str:
        if name in self.inits or name in self._written:
            return name
        if self.sink is not None and array.nbytes >= SMALL:
            kept = self.sink.add(name, array)
            if kept is None:
                self._written.add(name)
            else:
                self.inits[name] = kept
        else:
            self.inits[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def input(self, name: str, elem: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, name: str, elem: int, shape: list) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))

    # -- ops -------------------------------------------------------------------------------------
    def linear(
        self,
        name: str,
        x: str,
        w: np.ndarray,
        bias: np.ndarray | None = None,
        *,
        out: str | None = None,
        wf: WeightFormat | None = None,
    ) -> str:
        """x @ w.T (+ bias). w: (out_features, in_features) float32, as HF stores it. `wf` overrides the format."""
        wf = wf or self.wf
        outputs = [out] if out and bias is None else None
        wt = np.ascontiguousarray(w.T, dtype=np.float32)  # (K=in, N=out)
        if wf.kind == "nbits":
            y = self._matmul_nbits(name, x, wt, outputs, wf)
        elif wf.kind == "int8":
            y = self._dynamic_int8(name, x, wt, outputs)
        elif wf.kind == "fp16":
            b = self.op("Cast", [self.const(name + ".weight", wt.astype(np.float16))], to=TensorProto.FLOAT)[0]
            y = self.op("MatMul", [x, b], outputs=outputs)[0]
        else:
            y = self.op("MatMul", [x, self.const(name + ".weight", wt)], outputs=outputs)[0]
        if bias is not None:
            y = self.op(
                "Add", [y, self.const(name + ".bias", bias.astype(np.float32))], outputs=[out] if out else None
            )[0]
        return y

    def _matmul_nbits(self, name: str, x: str, wt: np.ndarray, outputs, wf: WeightFormat) -> str:
        k, n = wt.shape
        blocks, s = self._nbits_blocks(name, wt, wf)
        return self._nbits_node(name, self._unscaled(name, x, s), blocks, k, n, wf, outputs)

    def shared_linear(self, name: str, x: str, *, out: str | None = None) -> str | None:
        """x @ W.T over the blocks `gather_rows(name, ...)` quantized for a tied embedding, without the
        weights (the caller need not load or transpose them again); None when `name` has none."""
        got = self._shared.pop(name, None)
        if got is None:
            return None
        (blocks, s), wf = got
        n, k_blocks = blocks[1].shape  # scales (N, blocks); gather_rows shares only blocks that tile K
        k = k_blocks * wf.block_size
        return self._nbits_node(name, self._unscaled(name, x, s), blocks, k, n, wf, [out] if out else None)

    def _unscaled(self, name: str, x: str, s: np.ndarray | None) -> str:
        """x divided by the per-input-channel scales s that `name`'s blocks were quantized with (W * s):
        a linear's input before its MatMulNBits, a gathered row after; x itself when s is None."""
        if s is None:
            return x
        return self.op("Mul", [x, self.const(name + ".input_scale", (1 / s).astype(np.float32))])[0]

    def _nbits_blocks(self, name: str, wt: np.ndarray, wf: WeightFormat) -> tuple[tuple, np.ndarray | None]:
        """The blocks (packed (N, blocks, blob), scales (N, blocks), zero points) of wt (K, N) in `wf`,
        and the per-input-channel scales s the blocks were quantized with (W * s; None: W itself)."""
        if wf.method == "search":
            from .blockquant import quantize_blocks

            packed, scales, zeros, _ = quantize_blocks(wt, wf.bits, wf.block_size, wf.symmetric)
            return (packed, scales, zeros), None
        if wf.method != "rtn":
            return self._calibrated_blocks(name, wt, wf)
        return self._rtn_blocks(wt, wf), None

    @staticmethod
    def _rtn_blocks(wt: np.ndarray, wf: WeightFormat) -> tuple:
        """onnxruntime's own C++ round-to-nearest."""
        from onnxruntime.capi import _pybind_state as C

        k, n = wt.shape
        k_blocks = -(-k // wf.block_size)
        if k_blocks * wf.block_size != k:
            wt = np.pad(wt, ((0, k_blocks * wf.block_size - k), (0, 0)))
        per_byte = 8 // wf.bits
        packed = np.zeros((n, k_blocks, wf.block_size // per_byte), dtype=np.uint8)  # (N, blocks, blob)
        zeros = np.zeros((n, -(-k_blocks // per_byte)), dtype=np.uint8)  # (N, packed zero points)
        scales = np.zeros((n, k_blocks), dtype=np.float32)  # (N, blocks)
        quant = C.quantize_matmul_4bits if wf.bits == 4 else C.quantize_matmul_8bits
        quant(packed, wt, scales, zeros, wf.block_size, n, k, wf.symmetric)
        return packed, scales, zeros

    def _calibrated_blocks(self, name: str, wt: np.ndarray, wf: WeightFormat) -> tuple[tuple, np.ndarray | None]:
        """awq: W * s quantized with activation-weighted block scales (the input is divided by s);
        gptq: the same scaling, then GPTQ on W * s with the input's Hessian (rescaled by s); without
        the scaling GPTQ cannot recover channels whose activations dwarf the rest (their small weights
        round to zero in blocks scaled by the others). Statistics: quantize/onnx/calib.py."""
        from .blockquant import awq_scales, gptq

        st = self.stats.get(name)
        k = wt.shape[0]
        if st is None or st.shape[0] != k or (wf.method == "gptq" and st.shape != (k, k)):
            want = "the input's Hessian (K, K)" if wf.method == "gptq" else "activation statistics (K,)"
            raise ValueError(f"{name}: {wf.method} needs {want} with K = {k}: calibrate first")
        act = np.ascontiguousarray(np.diagonal(st) if st.ndim == 2 else st, dtype=np.float32)
        s, blocks = awq_scales(wt, wf.bits, wf.block_size, wf.symmetric, act)
        if wf.method == "gptq":
            h = np.asarray(st, dtype=np.float64) / np.outer(s, s)  # (K, K) Hessian of x / s
            blocks = gptq(wt * s[:, None], wf.bits, wf.block_size, wf.symmetric, h)
        return blocks, None if np.all(s == 1) else s

    def gather_rows(self, name: str, w: np.ndarray, ids: str, wf: WeightFormat, *, shared: bool = True) -> str | None:
        """Rows `ids` of w (N, K) from n-bit blocks (GatherBlockQuantized). `shared`: the very blocks
        that `shared_linear(name, ...)` then multiplies by (over the same initializers, as
        onnxruntime-genai does for tied embeddings), so a tied embedding costs no bytes of its own;
        else a table of its own. Dequantized exactly as MatMulNBits does (default zero point), so only
        symmetric blocks that tile K exactly; None when `wf` cannot (the caller stores the table)."""
        n, k = w.shape
        if wf.kind != "nbits" or not wf.symmetric or k % wf.block_size:
            return None
        got = self._nbits_blocks(name, np.ascontiguousarray(w.T, dtype=np.float32), wf)
        if shared:
            self._shared[name] = (got, wf)  # kept until `shared_linear(name, ...)`: quantized once, both read it
        (packed, scales, _), s = got
        rows = self.const(name + ".rows_shape", np.array([n, k * wf.bits // 8], dtype=np.int64))
        flat = self.op("Reshape", [self.const(name + ".qweight", packed), rows])[0]  # (N, K * bits / 8)
        x = self.op(
            "GatherBlockQuantized",
            [flat, ids, self.const(name + ".scales", scales)],
            domain=MS,
            bits=wf.bits,
            block_size=wf.block_size,
            gather_axis=0,
            quantize_axis=1,
        )[0]
        return self._unscaled(name, x, s)

    def _nbits_node(self, name: str, x: str, blocks: tuple, k: int, n: int, wf: WeightFormat, outputs) -> str:
        """The MatMulNBits node over packed blocks (N, blocks, blob), their scales and zero points."""
        packed, scales, zeros = blocks
        inputs = [x, self.const(name + ".qweight", packed), self.const(name + ".scales", scales)]
        if not wf.symmetric:
            inputs.append(self.const(name + ".zero_points", zeros))
        return self.op(
            "MatMulNBits",
            inputs,
            domain=MS,
            outputs=outputs,
            K=k,
            N=n,
            bits=wf.bits,
            block_size=wf.block_size,
            accuracy_level=wf.accuracy_level,
        )[0]

    def _dynamic_int8(self, name: str, x: str, wt: np.ndarray, outputs) -> str:
        """onnxruntime's dynamic quantization: int8 weights, symmetric with one scale per output column,
        activations quantized to uint8 per call (DynamicQuantizeMatMul, the op quantize_dynamic's
        MatMulInteger pattern fuses into; per-column scales keep small models usable)."""
        scale = np.abs(wt).max(axis=0) / 127.0  # (N,)
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.clip(np.rint(wt / scale), -127, 127).astype(np.int8)  # (K, N)
        return self.op(
            "DynamicQuantizeMatMul",
            [x, self.const(name + ".qweight", q), self.const(name + ".scale", scale)],
            domain=MS,
            outputs=outputs,
        )[0]

    def rms_norm(self, x: str, w: str, eps: float) -> str:
        return self.op("SimplifiedLayerNormalization", [x, w], axis=-1, epsilon=eps, stash_type=1)[0]

    def skip_rms_norm(self, x: str, skip: str, w: str, eps: float) -> tuple[str, str]:
        """(norm(x + skip), x + skip)."""
        outs = self.op("SkipSimplifiedLayerNormalization", [x, skip, w], 4, domain=MS, epsilon=eps)
        return outs[0], outs[3]

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, list(self.inits.values()))
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
            producer_name="edge-quantize",
        )
        model.ir_version = 10
        return model
