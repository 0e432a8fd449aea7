"""Importance matrix: computed with llama.cpp on the reference model, handed to llama_model_quantize.

llama-cpp-python has no imatrix API and the `llama-imatrix` tool is not installed with it, so the
collection runs in-process through llama.cpp's graph eval callback (`cb_eval` in the context
params), the same hook llama-imatrix uses: for every matrix multiplication by a `blk.*` weight with
at least 16 activation rows, the per-column sum of squared activations and the row count are
accumulated. The text is cut into chunks of `ctx` tokens with BOS first, as llama-imatrix does.

What llama_model_quantize receives (params.imatrix, a NULL-terminated llama_model_imatrix_data
array) is, per weight, the mean squared activation per input column: sum / count, exactly what
tools/quantize's load_imatrix makes of an imatrix file.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import BadRequestError, EdgeError

GGML_MAX_DIMS, GGML_MAX_SRC, GGML_MAX_OP_PARAMS, GGML_MAX_NAME = 4, 10, 64, 64  # ggml.h
GGML_TYPE_F32 = 0
MIN_ROWS = 16  # llama-imatrix ignores smaller batches


class GgmlTensor(ctypes.Structure):
    """struct ggml_tensor of the vendored ggml.h (llama.cpp 0c1e570), field by field."""

    _fields_ = [
        ("type", ctypes.c_int),  # enum ggml_type
        ("buffer", ctypes.c_void_p),  # ggml_backend_buffer *
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),  # elements per dimension
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),  # stride in bytes per dimension
        ("op", ctypes.c_int),  # enum ggml_op
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),  # ggml_tensor * sources
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def _ggml() -> ctypes.CDLL:
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_op_name.restype, lib.ggml_op_name.argtypes = ctypes.c_char_p, [ctypes.c_int]
    lib.ggml_backend_buffer_is_host.restype = ctypes.c_bool
    lib.ggml_backend_buffer_is_host.argtypes = [ctypes.c_void_p]
    return lib


def _op_id(lib: ctypes.CDLL, name: bytes) -> int:
    """The enum value of a ggml op, looked up by name in the loaded library (not retyped)."""
    for i in range(200):
        if lib.ggml_op_name(i) == name:
            return i
    raise EdgeError(f"ggml has no {name.decode()} op: llama-cpp-python does not match the expected llama.cpp")


def weight_name(raw: bytes) -> str:
    """Tensor name as llama-imatrix keys it: the part between '#' marks when the graph decorated it."""
    name = raw.decode("utf-8", "replace")
    parts = name.split("#")
    return parts[1] if len(parts) > 1 else name


@dataclass
class Imatrix:
    """Per weight: the sum of squared activations per input column, and how many rows were summed."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (n_mat * ncols,) f64
    counts: dict[str, int] = field(default_factory=dict)
    chunks: int = 0
    text_origin: str = ""

    def means(self) -> dict[str, np.ndarray]:
        """What llama_model_quantize expects: (sums / count) as float32, per weight."""
        return {k: (v / max(self.counts[k], 1)).astype(np.float32) for k, v in self.sums.items()}

    def add(self, name: str, x: np.ndarray, n_mat: int) -> None:
        """x: (..., rows, ncols) float32 activations of one matrix multiplication."""
        x = x.reshape(-1, x.shape[-1])  # (rows, ncols)
        acc = np.square(x, dtype=np.float64).sum(axis=0)  # (ncols,)
        if n_mat != 1:
            raise EdgeError(f"{name}: 3-D weights (mixture of experts) are not supported by the imatrix collector")
        if name in self.sums:
            if self.sums[name].shape != acc.shape:
                raise EdgeError(f"inconsistent activation size for {name}")
            self.sums[name] += acc
        else:
            self.sums[name] = acc
        self.counts[name] = self.counts.get(name, 0) + x.shape[0]
        if not np.isfinite(acc).all():
            raise EdgeError(f"non-finite activations in {name}: the reference model is broken")


class Collector:
    """The cb_eval callback: asks for blk.* matrix multiplications, then sums their inputs."""

    def __init__(self, imatrix: Imatrix):
        self.imatrix = imatrix
        self.lib = _ggml()
        self.mul_mat = _op_id(self.lib, b"MUL_MAT")
        self.error: BaseException | None = None
        import llama_cpp

        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_tensor)  # kept alive here

    def _on_tensor(self, tensor: int, ask: bool, _user: int) -> bool:
        try:
            t = GgmlTensor.from_address(tensor)
            if t.op != self.mul_mat or not t.src[0] or not t.src[1]:
                return not ask
            src0, src1 = GgmlTensor.from_address(t.src[0]), GgmlTensor.from_address(t.src[1])
            name = weight_name(src0.name)
            if ask:
                return name.startswith("blk.") and src1.ne[1] >= MIN_ROWS and src1.type == GGML_TYPE_F32
            if not self.lib.ggml_backend_buffer_is_host(src1.buffer):
                raise EdgeError("activations are not in host memory (GPU backend?): imatrix needs the CPU backend")
            self.imatrix.add(name, _view(src1), int(src0.ne[2] * src0.ne[3]))
            return True
        except BaseException as exc:
            self.error = self.error or exc
            return False


def _view(t: GgmlTensor) -> np.ndarray:
    """A (ne3, ne2, ne1, ne0) float32 view of a host tensor, honouring its byte strides."""
    shape = tuple(int(t.ne[i]) for i in reversed(range(GGML_MAX_DIMS)))
    strides = tuple(int(t.nb[i]) for i in reversed(range(GGML_MAX_DIMS)))
    span = sum((n - 1) * s for n, s in zip(shape, strides)) + 4
    buf = (ctypes.c_char * span).from_address(t.data)
    # a ctypes array is a buffer; typeshed's ctypes.Array declares no __buffer__ before Python 3.12
    flat = np.frombuffer(buf, np.float32)  # type: ignore[call-overload]
    return np.lib.stride_tricks.as_strided(flat, shape, strides)


def compute_imatrix(
    model_path: Path,
    text: bytes,
    *,
    ctx: int = 512,
    n_threads: int | None = None,
    max_chunks: int | None = None,
    origin: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> Imatrix:
    """Run the reference model over `text` in chunks of ctx tokens and collect the importance matrix."""
    from .eval.models import GgufModel
    from .eval.text import chunks

    imatrix = Imatrix(text_origin=origin)
    collector = Collector(imatrix)
    with GgufModel(Path(model_path), ctx, n_threads, cb_eval=collector.callback) as model:
        tokens = model.tokenize(text)
        todo = list(chunks(tokens, ctx, model.bos if model.add_bos else None))[: max_chunks or None]
        if not todo:
            raise BadRequestError(
                f"the imatrix text has {len(tokens)} tokens, fewer than one chunk of {ctx}: "
                "give a longer --imatrix-text"
            )
        for i, chunk in enumerate(todo):
            try:
                model.chunk_logits(chunk, 0)
            except EdgeError:
                if collector.error:
                    raise collector.error from None
                raise
            if collector.error:
                raise collector.error
            imatrix.chunks += 1
            if progress:
                progress(i + 1, len(todo))
    if not imatrix.sums:
        raise EdgeError(f"no activations were collected from {model_path}: is it a supported architecture?")
    return imatrix
