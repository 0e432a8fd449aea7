"""Atomic, streaming GGUF output on top of gguf.GGUFWriter.

Atomic: everything is written to a temp file in the target folder (name starting ".edge-tmp-"),
fsynced, then renamed over the final name; any exception, Ctrl-C included, removes the temp
file. A SIGKILL can leave a ".edge-tmp-*" file behind, never a truncated file under the final name.

Streaming: all tensor infos are declared first (shapes and types are known from the plan), then
tensors are produced and written one at a time, so the model is never whole in memory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from edge.errors import OutputExistsError

TMP_PREFIX = ".edge-tmp-"


def refuse_existing(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; use --force to overwrite it")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(final: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temp path beside `final`; on success fsync it and rename it to `final`."""
    final = Path(final)
    refuse_existing(final, force)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{secrets.token_hex(4)}-{final.name}"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # mode as umask allows
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, final)
        _fsync_path(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(final: Path, *, force: bool = False) -> Iterator[Path]:
    """Like atomic_output for a folder: fill the yielded temp folder, it becomes `final` at the end."""
    final = Path(final)
    if final.exists() and (not force or not final.is_dir()):
        refuse_existing(final, force)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{secrets.token_hex(4)}-{final.name}"
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.iterdir():
            _fsync_path(f)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_path(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    with atomic_output(path, force=force) as tmp:
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
