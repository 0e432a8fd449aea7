"""Activation statistics for calibrated ONNX types, from our own graph in onnxruntime.

A temporary weight-only int8 export of the same checkpoint (quantize/onnx/export.py; its logits are
within KLD 0.002 of F32 on SmolLM2, and it holds a quarter of fp32's memory) is run over the
calibration text (`--calib-text`), cut as `--imatrix-text` is: chunks of `ctx` tokens, the tail
dropped, each chunk starting with BOS when the tokenizer adds one. The input of every linear layer
is made a graph output and accumulated per input channel: the mean squared activation (what the
importance matrix of the GGUF path holds, for AWQ) or the Hessian sum x x^T (for GPTQ), keyed by
the graph's linear names.

Memory: the session (~1.1 bytes a weight at int8) plus one chunk's activations of every linear
input (ctx x the sum of their widths, float32), plus at most HESSIAN_BUDGET of Hessians being
accumulated (the finished ones are spilled to disk and memory-mapped).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from edge.errors import BadRequestError, EdgeError, NotFoundError
from edge.formats.onnx import MODEL_FILE, read_manifest

CALIB_FILE = "calib.onnx"  # the graph with the linear inputs as outputs, beside model.onnx


@dataclass(frozen=True)
class CalibOptions:
    text: Path  # --calib-text
    ctx: int = 512  # tokens per chunk, as --imatrix-text


@dataclass(frozen=True)
class CalibText:
    data: bytes
    ctx: int

    def chunks(self, src: Path) -> list[np.ndarray]:
        """The text tokenized by the checkpoint's own tokenizer, cut into chunks."""
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(Path(src) / "tokenizer.json"))
        return calib_tokens(lambda s: tok.encode(s, add_special_tokens=True).ids, self.data, self.ctx)


def check_calibration(otypes: list, calib: CalibOptions | None) -> CalibText | None:
    """Before any output: the installed onnxruntime has what the types need, and calibrated types
    (quant.OnnxType.calibrated) have a readable UTF-8 text. Returns the text, or None when unused."""
    from onnxruntime.capi import _pybind_state as C

    for t in otypes:
        eight = t.weights.kind == "nbits" and 8 in (t.weights.bits, t.weights.head_bits)
        if eight and not hasattr(C, "quantize_matmul_8bits"):
            raise BadRequestError(
                f"{t.label} needs 8-bit MatMulNBits, which the installed onnxruntime lacks: "
                "upgrade onnxruntime or choose onnx:int8_dyn"
            )
    wanted = [t.label for t in otypes if t.calibrated]
    if not wanted:
        return None
    if calib is None:
        raise BadRequestError(f"{', '.join(wanted)} measure activations: add --calib-text FILE (UTF-8 text)")
    path = Path(calib.text)
    if not path.is_file():
        raise NotFoundError(f"--calib-text {path} does not exist: give a UTF-8 text file")
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequestError(f"--calib-text {path} is not UTF-8 ({exc}); convert it first") from None
    return CalibText(data[:-1] if data.endswith(b"\n") else data, calib.ctx)


def linear_inputs(model: onnx.ModelProto) -> dict[str, tuple[str, int]]:
    """linear name -> (the tensor that feeds it, its width K): each MatMul by an initializer named
    `<linear>.weight` (K, N), and each MatMulNBits by `<linear>.qweight` (attribute K)."""
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    out: dict[str, tuple[str, int]] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1].endswith(".weight"):
            if node.input[1] in dims:
                out[node.input[1].removesuffix(".weight")] = (node.input[0], int(dims[node.input[1]][0]))
        elif node.op_type == "MatMulNBits" and node.input[1].endswith(".qweight"):
            k = next(a.i for a in node.attribute if a.name == "K")
            out[node.input[1].removesuffix(".qweight")] = (node.input[0], int(k))
    return out


def calib_tokens(tokenize: Callable[[str], list[int]], text: bytes, ctx: int) -> list[np.ndarray]:
    """The chunks to calibrate on; an error when the text does not fill one."""
    from ..eval.text import chunks

    tokens = np.asarray(tokenize(text.decode("utf-8", "replace")), dtype=np.int64)
    bos_only = tokenize("")
    bos = bos_only[0] if len(bos_only) == 1 else None
    todo = list(chunks(tokens, ctx, bos))
    if not todo:
        raise BadRequestError(
            f"the calibration text has {len(tokens)} tokens, fewer than one chunk of {ctx}: give a longer --calib-text"
        )
    return todo


HESSIAN_BUDGET = 1 << 29  # bytes of Hessians accumulated in one pass over the text (float32)


def collect(
    folder: Path,
    todo: list[np.ndarray],
    *,
    full: bool = False,
    n_threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Per linear layer: the mean squared activation per input channel (K,), or with `full` the
    Hessian sum x x^T / rows (K, K) that GPTQ needs. Hessians are written to `folder/hessians/`
    and returned memory-mapped; each pass over the text accumulates at most HESSIAN_BUDGET bytes of
    them, so memory stays bounded for any model (more passes for bigger ones)."""
    import onnxruntime as ort

    folder = Path(folder)
    model = onnx.load(str(folder / MODEL_FILE), load_external_data=False)
    inputs = linear_inputs(model)
    if not inputs:
        raise EdgeError(f"{folder}: no linear layer found, nothing to calibrate")
    feeds_of = {lin: x for lin, (x, _) in inputs.items()}
    widths = {x: k for x, k in inputs.values()}
    wanted = sorted(set(feeds_of.values()))
    model.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in wanted)
    (folder / CALIB_FILE).write_bytes(model.SerializeToString())  # external data paths stay relative
    del model
    m = read_manifest(folder)["model"]
    so = ort.SessionOptions()
    so.intra_op_num_threads = n_threads or 0
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(folder / CALIB_FILE), so, providers=["CPUExecutionProvider"])
    passes = _passes(wanted, widths, HESSIAN_BUDGET if full else None)
    done, total = 0, len(todo) * len(passes)
    sums: dict[str, np.ndarray] = {}
    rows = sum(len(c) for c in todo)
    for group in passes:
        acc: dict[str, np.ndarray] = {}
        for chunk in todo:
            for name, x in zip(group, sess.run(group, _feeds(m, chunk))):
                x = x.reshape(-1, x.shape[-1])  # (tokens, K)
                if full:
                    xx = x.T @ x  # (K, K) float32
                    acc[name] = acc[name] + xx if name in acc else xx
                else:
                    x2 = np.square(x, dtype=np.float64).sum(axis=0)  # (K,)
                    acc[name] = acc[name] + x2 if name in acc else x2
            done += 1
            if progress:
                progress(done, total)
        for name, v in acc.items():
            if not np.isfinite(v).all():
                raise EdgeError(f"non-finite activations at {name}: the model is broken")
            sums[name] = _spill(folder, name, v / rows) if full else (v / rows).astype(np.float32)
    del sess
    return {lin: sums[t] for lin, t in feeds_of.items()}


def _passes(wanted: list[str], widths: dict[str, int], budget: int | None) -> list[list[str]]:
    """The linear inputs grouped so that each group's float32 Hessians fit `budget` (one group without)."""
    if budget is None:
        return [wanted]
    groups: list[list[str]] = [[]]
    used = 0
    for name in wanted:
        size = 4 * widths.get(name, 0) ** 2
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += size
    return groups


def _spill(folder: Path, name: str, h: np.ndarray) -> np.ndarray:
    path = folder / "hessians" / (name.strip("/").replace("/", "_") + ".npy")
    path.parent.mkdir(exist_ok=True)
    np.save(path, h.astype(np.float32))
    return np.load(path, mmap_mode="r")


def _feeds(m: dict, chunk: np.ndarray) -> dict[str, np.ndarray]:
    """One chunk from position 0 with an empty KV cache, as the runtime's prompt step feeds it."""
    n = len(chunk)
    kv = np.zeros((1, int(m["n_kv_heads"]), n, int(m["head_dim"])), np.float32)  # (1, n_kv, n, head_dim)
    feeds: dict[str, np.ndarray] = {
        "input_ids": chunk.astype(np.int64)[None, :],  # (1, n)
        "attention_mask": np.ones((1, n), np.int64),  # n tokens in the cache after this step
    }
    for i in range(int(m["n_layers"])):
        feeds[f"past_key_values.{i}.key"] = kv
        feeds[f"past_key_values.{i}.value"] = kv
    return feeds
