"""A small, bounded reader of GGUF header metadata, to list models without loading them.

It reads the key/value section only (and, on request, the tensor infos for a parameter count),
never the tensor data. Every count and length read from the file is checked against a cap and
against the bytes that remain before it is used, so a crafted header fails fast with
ModelFormatError instead of hanging or allocating. It is not the full validator (edge.formats.validate):
it trusts nothing, but it checks only what it reads.

GGUF header (little-endian), as read here:
    magic "GGUF" | version u32 (2 or 3) | tensor_count u64 | kv_count u64
    kv_count x { key: u64 len + utf-8 | value_type u32 | value }
    value: fixed-size scalar | string (u64 len + bytes) | array (elem_type u32, count u64, elems)
    tensor_count x { name: string | n_dims u32 | n_dims x u64 | ggml_type u32 | offset u64 }
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import ModelFormatError
from edge.lightimport import gguf_constants

gguf = gguf_constants()  # the enums and tables only: no reader, writer or numpy (edge.lightimport)

MAX_KV = 4096
MAX_TENSORS = 1 << 20
MAX_KEY_BYTES = 1024
MAX_STRING_BYTES = 1 << 20  # chat templates are < 300 KB
MAX_ARRAY_ITEMS = 1 << 24  # vocabularies are < 1M tokens
KEEP_ARRAY_ITEMS = 64  # longer arrays are summarized as ArrayInfo
MAX_DIMS = 4

VT = gguf.GGUFValueType
_SCALARS = {
    VT.UINT8: "<B", VT.INT8: "<b", VT.UINT16: "<H", VT.INT16: "<h", VT.UINT32: "<I", VT.INT32: "<i",
    VT.FLOAT32: "<f", VT.BOOL: "<?", VT.UINT64: "<Q", VT.INT64: "<q", VT.FLOAT64: "<d",
}  # fmt: skip


@dataclass(frozen=True)
class ArrayInfo:
    """An array too long to keep (e.g. the vocabulary): its element type and length only."""

    item_type: int
    count: int


@dataclass
class GGUFMeta:
    version: int
    tensor_count: int
    kv: dict[str, Any] = field(default_factory=dict)
    parameter_count: int | None = None  # only with read_gguf_meta(..., tensors=True)

    @property
    def architecture(self) -> str:
        return str(self.kv.get(gguf.Keys.General.ARCHITECTURE, ""))

    @property
    def chat_template(self) -> str | None:
        value = self.kv.get(gguf.Keys.Tokenizer.CHAT_TEMPLATE)
        return value if isinstance(value, str) else None

    @property
    def quantization(self) -> str:
        """e.g. "Q4_1", from general.file_type ("" when absent or unknown)."""
        try:
            return gguf.LlamaFileType(int(self.kv[gguf.Keys.General.FILE_TYPE])).name.removeprefix("MOSTLY_")
        except (KeyError, ValueError, TypeError):
            return ""

    @property
    def size_label(self) -> str:
        """e.g. "135M": general.size_label, else computed from the parameter count."""
        label = self.kv.get(gguf.Keys.General.SIZE_LABEL)
        if isinstance(label, str) and label:
            return label
        n = self.parameter_count
        return "" if not n else f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


class _Reader:
    """A cursor over the mapped file; every read is checked against the end of the file first."""

    def __init__(self, buf, size: int):
        self.buf, self.size, self.pos = buf, size, 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise ModelFormatError(f"GGUF header truncated or corrupt: {what} runs past the end of the file")

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return value

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.pos += n

    def string(self, cap: int, what: str) -> str:
        n = self.unpack("<Q", what)
        if n > cap:
            raise ModelFormatError(f"GGUF {what} is {n} bytes long; the limit is {cap}")
        self.need(n, what)
        raw, self.pos = self.buf[self.pos : self.pos + n], self.pos + n
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFormatError(f"GGUF {what} is not valid UTF-8") from None

    def skip_strings(self, count: int, what: str) -> None:
        buf, pos, size = self.buf, self.pos, self.size
        for _ in range(count):  # the hot loop of a vocabulary: kept minimal
            if pos + 8 > size:
                break
            pos += 8 + struct.unpack_from("<Q", buf, pos)[0]
            if pos > size:
                break
        else:
            self.pos = pos
            return
        raise ModelFormatError(f"GGUF header truncated or corrupt: {what} runs past the end of the file")

    def value(self, vtype: int, key: str) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], key)
        if vtype == VT.STRING:
            return self.string(MAX_STRING_BYTES, f"value of {key}")
        if vtype == VT.ARRAY:
            return self.array(key)
        raise ModelFormatError(f"GGUF key {key} has an unknown value type {vtype}")

    def array(self, key: str) -> Any:
        item_type, count = self.unpack("<I", key), self.unpack("<Q", key)
        if count > MAX_ARRAY_ITEMS or item_type not in (*_SCALARS, VT.STRING):
            raise ModelFormatError(
                f"GGUF array {key} has {count} items of type {item_type}; the limit is {MAX_ARRAY_ITEMS} scalars or strings"
            )
        if count <= KEEP_ARRAY_ITEMS:
            return [self.value(item_type, key) for _ in range(count)]
        if item_type == VT.STRING:
            self.skip_strings(count, key)
        else:
            self.skip(struct.calcsize(_SCALARS[item_type]) * count, key)
        return ArrayInfo(item_type, count)


@contextlib.contextmanager
def _mapped(path: Path) -> Iterator[_Reader]:
    """A reader over the read-only mapped file (a 0-byte file maps to b"")."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ModelFormatError(f"cannot read {path}: {e.strerror or e}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        try:
            yield _Reader(buf, size)
        finally:
            if size:
                buf.close()


def read_gguf_meta(path: Path, *, tensors: bool = False) -> GGUFMeta:
    """The header key/values of a GGUF file (arrays longer than 64 items summarized as ArrayInfo)."""
    with _mapped(path) as r:
        return _read(r, tensors)


def cached_gguf_meta(path: Path) -> GGUFMeta:
    """read_gguf_meta(path, tensors=True), remembered while the file's size and mtime stay the same.

    For listings (/api/tags) that would otherwise walk each vocabulary (~0.1 s per model) every time.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        raise ModelFormatError(f"cannot read {path}: {e.strerror or e}") from None
    return _cached(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _cached(path: str, size: int, mtime_ns: int) -> GGUFMeta:
    return read_gguf_meta(Path(path), tensors=True)


def _read(r: _Reader, tensors: bool) -> GGUFMeta:
    r.need(4, "magic")
    if bytes(r.buf[0:4]) != b"GGUF":
        raise ModelFormatError("not a GGUF file (bad magic); convert the model with edge-quantize")
    r.pos = 4
    version = r.unpack("<I", "version")
    if version not in (2, 3):
        raise ModelFormatError(f"GGUF version {version} is not supported (2 or 3)")
    n_tensors, n_kv = r.unpack("<Q", "tensor count"), r.unpack("<Q", "key count")
    if n_kv > MAX_KV or n_tensors > MAX_TENSORS:
        raise ModelFormatError(
            f"GGUF header declares {n_kv} keys and {n_tensors} tensors; limits {MAX_KV} and {MAX_TENSORS}"
        )
    meta = GGUFMeta(version, n_tensors)
    for _ in range(n_kv):
        key = r.string(MAX_KEY_BYTES, "key")
        if key in meta.kv:
            raise ModelFormatError(f"GGUF key {key} appears twice")
        meta.kv[key] = r.value(r.unpack("<I", key), key)
    if tensors:
        meta.parameter_count = sum(_tensor_elements(r) for _ in range(n_tensors))
    return meta


def _tensor_elements(r: _Reader) -> int:
    name = r.string(MAX_KEY_BYTES, "tensor name")
    n_dims = r.unpack("<I", name)
    if n_dims > MAX_DIMS:
        raise ModelFormatError(f"GGUF tensor {name} has {n_dims} dimensions; the limit is {MAX_DIMS}")
    n = 1
    for _ in range(n_dims):
        n *= r.unpack("<Q", name)
        if n >= 1 << 62:
            raise ModelFormatError(f"GGUF tensor {name} declares an impossible size")
    r.unpack("<I", name), r.unpack("<Q", name)  # ggml type, data offset: not needed here
    return n


def token_text(path: Path, meta: GGUFMeta, token_id: int | None) -> str | None:
    """The vocabulary string of one token id (e.g. BOS), walking the token array with the same bounds."""
    tokens = meta.kv.get(gguf.Keys.Tokenizer.LIST)
    if token_id is None or not isinstance(tokens, (ArrayInfo, list)):
        return None
    if isinstance(tokens, list):
        return tokens[token_id] if 0 <= token_id < len(tokens) else None
    if not 0 <= token_id < tokens.count:
        return None
    return _nth_token(path, token_id)


def _nth_token(path: Path, token_id: int) -> str | None:
    with _mapped(path) as r:
        r.pos = 4 + 4 + 8
        for _ in range(min(r.unpack("<Q", "key count"), MAX_KV)):
            key = r.string(MAX_KEY_BYTES, "key")
            vtype = r.unpack("<I", key)
            if key != gguf.Keys.Tokenizer.LIST:
                r.value(vtype, key)
                continue
            r.skip(4 + 8, key)
            r.skip_strings(token_id, key)
            return r.string(MAX_STRING_BYTES, "token")
    return None
