"""Atomic, streaming GGUF output on top of gguf.GGUFWriter.

Atomic: written through edge.fsio.atomic_file (temp file beside the final name, fsync, rename,
fsync the folder); any exception, Ctrl-C included, removes the temp file, and a SIGKILL can leave
a ".edge-tmp-*" file behind, never a truncated file under the final name.

Streaming: all tensor infos are declared first (shapes and types are known from the plan), then
tensors are produced and written one at a time, so the model is never whole in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from edge.fsio import atomic_file


@dataclass(frozen=True)
class OutTensor:
    """One tensor of the output: its GGUF name, shape (numpy order), type and a loader."""

    name: str
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType  # F32, F16 or BF16
    load: Callable[[], np.ndarray]  # -> array of `shape` in the storage dtype below


STORAGE: dict[gguf.GGMLQuantizationType, np.dtype] = {  # GGML float type -> numpy dtype of the bytes written
    gguf.GGMLQuantizationType.F32: np.dtype("<f4"),
    gguf.GGMLQuantizationType.F16: np.dtype("<f2"),
    gguf.GGMLQuantizationType.BF16: np.dtype("<u2"),
}


def to_storage(a: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """float32 array -> the bytes of `qtype` (bf16 rounded to nearest even, as llama.cpp does)."""
    if qtype == gguf.GGMLQuantizationType.BF16:
        return _f32_to_bf16(np.asarray(a, dtype=np.float32))
    return np.ascontiguousarray(a, dtype=STORAGE[qtype])


BF16_CHUNK = 1 << 20  # values per step: the temporaries stay a few MB whatever the tensor's size


def _f32_to_bf16(a: np.ndarray) -> np.ndarray:
    """Round to nearest even, NaN kept quiet. In chunks, in uint32: whole-tensor uint64 temporaries
    would take ~7 GB on an 8B model's embedding (201M values)."""
    bits = np.ascontiguousarray(a).reshape(-1).view(np.uint32)  # (n,)
    out = np.empty(bits.shape, dtype=np.uint16)  # (n,)
    for s in range(0, bits.size, BF16_CHUNK):
        b = bits[s : s + BF16_CHUNK]
        rounded = (b + (0x7FFF + ((b >> 16) & 1))) >> 16  # wraps only for NaNs, replaced below
        out[s : s + BF16_CHUNK] = np.where((b & 0x7FFFFFFF) > 0x7F800000, (b >> 16) | 64, rounded)
    return out.reshape(a.shape)


def write_gguf(
    path: Path,
    arch_name: str,
    add_metadata: Callable[[gguf.GGUFWriter], None],
    tensors: list[OutTensor],
    *,
    force: bool = False,
    on_tensor: Callable[[OutTensor], None] = lambda t: None,
) -> None:
    """Write a GGUF file atomically, one tensor in memory at a time."""
    with atomic_file(path, force=force) as tmp:
        writer = gguf.GGUFWriter(tmp, arch_name)
        try:
            add_metadata(writer)
            for t in tensors:
                nbytes = int(np.prod(t.shape, dtype=np.int64)) * STORAGE[t.qtype].itemsize
                writer.add_tensor_info(t.name, t.shape, STORAGE[t.qtype], nbytes, raw_dtype=t.qtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for t in tensors:
                data = t.load()
                if data.shape != t.shape or data.dtype != STORAGE[t.qtype]:
                    raise AssertionError(
                        f"{t.name}: produced {data.dtype}{list(data.shape)}, declared {STORAGE[t.qtype]}{list(t.shape)}"
                    )
                writer.write_tensor_data(data)
                on_tensor(t)
        finally:
            writer.close()
