"""THE GGUF reader: header, key/values and tensor table, bounded; the tensor data is never read.

Every count and length read from the file is checked against a cap and against the bytes that
remain before it is used, so a crafted header fails fast with ModelFormatError instead of hanging
or allocating. The structural rules of ggml's gguf.cpp are applied here (no empty or duplicate
keys, known value types, no nested arrays, alignment a u32 power of two, tensor names < 64 bytes,
at most 4 dimensions, known ggml types). edge.formats.validate adds the stricter checks a file must
pass before llama.cpp sees it (tensor layout, vocabulary, key types) on top of this reader.

    open_gguf(path) -> GGUFFile      the mapped file: .meta, .tensors, and bounded array decoding
    read_gguf_meta(path) -> GGUFMeta  the header alone (the file is closed again)
    cached_gguf_meta(path)            the same with the tensor table, remembered per file version
    token_text(path, meta, id)        one vocabulary string

GGUF header (little-endian):
    magic "GGUF" | version u32 (2 or 3) | tensor_count u64 | kv_count u64
    kv_count x { key: u64 len + utf-8 | value_type u32 | value }
    value: fixed-size scalar | string (u64 len + bytes) | array (item_type u32, count u64, items)
    tensor_count x { name: string | n_dims u32 | n_dims x i64 | ggml_type u32 | offset u64 }
    padding to general.alignment (32 by default), then the data section
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
MAX_STRING_ITEMS = 1 << 23  # all string-array items of a file together (vocab + merges < 1M in real models)
GGML_MAX_NAME = 64  # tensor names are shorter (gguf.cpp)
GGML_MAX_DIMS = 4
INT64_MAX = (1 << 63) - 1
DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT
HEADER_BYTES = 4 + 4 + 8 + 8  # magic | version | tensor_count | kv_count

ValueType = gguf.GGUFValueType
_SCALARS = {
    ValueType.UINT8: "B", ValueType.INT8: "b", ValueType.UINT16: "H", ValueType.INT16: "h",
    ValueType.UINT32: "I", ValueType.INT32: "i", ValueType.FLOAT32: "f", ValueType.BOOL: "?",
    ValueType.UINT64: "Q", ValueType.INT64: "q", ValueType.FLOAT64: "d",
}  # fmt: skip


@dataclass(frozen=True)
class ArrayRef:
    """An array value, left in the file: decode it with GGUFFile.numbers / .strings."""

    item_type: int  # GGUFValueType of every item
    count: int
    offset: int  # file offset of the first item
    end: int  # file offset just past the last item


@dataclass(frozen=True)
class TensorInfo:
    """One row of the tensor table (or of a planned model: profiles.plan.shape)."""

    name: str
    shape: tuple[int, ...]  # ggml order: ne[0] (the row length) first
    ggml_type: int  # a gguf.GGMLQuantizationType member (an IntEnum), known to GGML_QUANT_SIZES
    offset: int = 0  # relative to the data section

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        """Bytes of the data, as ggml counts them: n_elements / block_size * type_size."""
        block, type_size = gguf.GGML_QUANT_SIZES[self.ggml_type]
        return self.n_elements // block * type_size

    @property
    def type_name(self) -> str:
        return gguf.GGMLQuantizationType(self.ggml_type).name


@dataclass
class GGUFMeta:
    version: int
    tensor_count: int
    kv: dict[str, Any] = field(default_factory=dict)  # key -> scalar | str | ArrayRef
    types: dict[str, int] = field(default_factory=dict)  # key -> GGUFValueType of the value
    kv_end: int = 0  # file offset just past the key/value section (the tensor table starts here)
    tensors: tuple[TensorInfo, ...] | None = None  # None unless the tensor table was read
    data_offset: int = 0  # file offset of the data section (with the tensor table only)

    @property
    def alignment(self) -> int:
        return int(self.kv.get(gguf.Keys.General.ALIGNMENT, DEFAULT_ALIGNMENT))

    @property
    def architecture(self) -> str:
        return str(self.kv.get(gguf.Keys.General.ARCHITECTURE, ""))

    @property
    def chat_template(self) -> str | None:
        value = self.kv.get(gguf.Keys.Tokenizer.CHAT_TEMPLATE)
        return value if isinstance(value, str) else None

    @property
    def parameter_count(self) -> int | None:
        return None if self.tensors is None else sum(t.n_elements for t in self.tensors)

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


class _Cursor:
    """A position in the mapped file; every read is checked against the end of the file first."""

    def __init__(self, buf, size: int, pos: int = 0):
        self.buf, self.size, self.pos = buf, size, pos

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


class GGUFFile:
    """A GGUF file mapped read-only, its header (and tensor table) read; see open_gguf."""

    def __init__(self, path: Path, buf, size: int, tensors: bool):
        self.path, self.buf, self.size = path, buf, size
        self.meta = _read_meta(_Cursor(buf, size), tensors)

    @property
    def tensors(self) -> tuple[TensorInfo, ...]:
        if self.meta.tensors is None:
            raise ValueError("open_gguf(..., tensors=False) did not read the tensor table")
        return self.meta.tensors

    def array(self, key: str) -> ArrayRef | None:
        value = self.meta.kv.get(key)
        return value if isinstance(value, ArrayRef) else None

    def numbers(self, ref: ArrayRef) -> list:
        """The items of an array of numbers or bools (its bounds were checked when the header was read)."""
        return list(struct.unpack_from(f"<{ref.count}{_SCALARS[ref.item_type]}", self.buf, ref.offset))

    def strings(self, ref: ArrayRef, key: str, cap: int = MAX_STRING_BYTES) -> list[str]:
        """The items of a string array, each at most `cap` bytes and valid UTF-8."""
        blob = bytes(self.buf[ref.offset : ref.end])  # the array's bytes, already known to be inside the file
        out: list[bytes] = []
        u64, pos, append = struct.Struct("<Q").unpack_from, 0, out.append
        for _ in range(ref.count):  # hot loop (262k tokens for Gemma-3): kept minimal
            (n,) = u64(blob, pos)
            pos += 8
            if n > cap:
                raise ModelFormatError(f"GGUF {key}[{len(out)}] is {n} bytes long; the limit is {cap}")
            append(blob[pos : pos + n])
            pos += n
        try:  # one decode for all: NUL ends any unfinished UTF-8 sequence, so each item is checked on its own
            texts = b"\x00".join(out).decode().split("\x00")
            return texts if len(texts) == len(out) else [t.decode() for t in out]  # some item holds a NUL
        except UnicodeDecodeError:
            bad = next(i for i, t in enumerate(out) if not _utf8(t))
            raise ModelFormatError(f"GGUF {key}[{bad}] is not valid UTF-8") from None

    def value(self, key: str) -> Any:
        """The value of `key` with arrays decoded into lists (None when absent)."""
        v = self.meta.kv.get(key)
        if not isinstance(v, ArrayRef):
            return v
        return self.strings(v, key) if v.item_type == ValueType.STRING else self.numbers(v)


def _utf8(b: bytes) -> bool:
    try:
        b.decode()
        return True
    except UnicodeDecodeError:
        return False


@contextlib.contextmanager
def open_gguf(path: Path, *, tensors: bool = True) -> Iterator[GGUFFile]:
    """The file mapped read-only with its header read (and its tensor table, unless tensors=False)."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ModelFormatError(f"cannot read {path}: {e.strerror or e}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if not size:  # an empty file cannot be mapped
            yield GGUFFile(path, b"", 0, tensors)
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            yield GGUFFile(path, buf, size, tensors)


def read_gguf_meta(path: Path, *, tensors: bool = False) -> GGUFMeta:
    """The header key/values of a GGUF file (and its tensor table with tensors=True)."""
    with open_gguf(path, tensors=tensors) as f:
        return f.meta


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


def token_text(path: Path, meta: GGUFMeta, token_id: int | None) -> str | None:
    """The vocabulary string of one token id (e.g. BOS), walking the token array with the same bounds."""
    ref = meta.kv.get(gguf.Keys.Tokenizer.LIST)
    if token_id is None or not isinstance(ref, ArrayRef) or ref.item_type != ValueType.STRING:
        return None
    if not 0 <= token_id < ref.count:
        return None
    with open_gguf(path, tensors=False) as f:
        r = _Cursor(f.buf, f.size, ref.offset)
        r.skip_strings(token_id, "token")
        return r.string(MAX_STRING_BYTES, "token")


# -- the header ------------------------------------------------------------------------------------


def _read_meta(r: _Cursor, tensors: bool) -> GGUFMeta:
    r.need(4, "magic")
    if bytes(r.buf[0:4]) != b"GGUF":
        raise ModelFormatError("not a GGUF file (bad magic); convert the model with edge-quantize")
    r.pos = 4
    version = r.unpack("<I", "version")
    if version not in (2, 3):
        raise ModelFormatError(
            f"GGUF version {version} is not supported (2 or 3); re-convert the model with edge-quantize"
        )
    n_tensors, n_kv = r.unpack("<Q", "tensor count"), r.unpack("<Q", "key count")
    if n_kv > MAX_KV:
        raise ModelFormatError(
            f"GGUF header declares {n_kv} keys; the limit is {MAX_KV}: the file is corrupt or hostile"
        )
    if n_tensors > MAX_TENSORS:
        raise ModelFormatError(
            f"GGUF header declares {n_tensors} tensors; the limit is {MAX_TENSORS}: the file is corrupt or hostile"
        )
    meta = GGUFMeta(version, n_tensors)
    budget = [MAX_STRING_ITEMS]
    for i in range(n_kv):
        key = r.string(MAX_KEY_BYTES, f"key {i}")
        if not key:
            raise ModelFormatError(f"GGUF key {i} is empty")
        if key in meta.kv:
            raise ModelFormatError(f"GGUF key {key} appears twice; llama.cpp refuses such a file")
        vtype = r.unpack("<I", f"type of {key}")
        meta.types[key] = vtype
        meta.kv[key] = _value(r, vtype, key, budget)
    _check_alignment(meta)
    meta.kv_end = r.pos
    if tensors:
        meta.tensors = tuple(_tensor_info(r, i) for i in range(n_tensors))
        meta.data_offset = -(-r.pos // meta.alignment) * meta.alignment if n_tensors else r.pos
    return meta


def _value(r: _Cursor, vtype: int, key: str, budget: list[int]) -> Any:
    if vtype in _SCALARS:
        return r.unpack("<" + _SCALARS[vtype], key)
    if vtype == ValueType.STRING:
        return r.string(MAX_STRING_BYTES, f"value of {key}")
    if vtype == ValueType.ARRAY:
        return _array(r, key, budget)
    raise ModelFormatError(f"GGUF key {key} has an unknown value type {vtype} (valid: 0..12)")


def _array(r: _Cursor, key: str, budget: list[int]) -> ArrayRef:
    item_type, count = r.unpack("<I", f"item type of {key}"), r.unpack("<Q", f"length of {key}")
    if item_type == ValueType.ARRAY:
        raise ModelFormatError(f"GGUF key {key} is an array of arrays; llama.cpp does not read nested arrays")
    if item_type not in _SCALARS and item_type != ValueType.STRING:
        raise ModelFormatError(f"GGUF array {key} has an unknown item type {item_type} (valid: 0..12)")
    if count > MAX_ARRAY_ITEMS:
        raise ModelFormatError(f"GGUF array {key} declares {count} items; the limit is {MAX_ARRAY_ITEMS}")
    start = r.pos
    if item_type == ValueType.STRING:
        r.need(8 * count, key)  # each item has at least its u64 length
        budget[0] -= count
        if budget[0] < 0:
            raise ModelFormatError(f"GGUF string arrays hold more than {MAX_STRING_ITEMS} items in total (at {key})")
        r.skip_strings(count, key)
    else:
        r.skip(struct.calcsize(_SCALARS[item_type]) * count, key)
    return ArrayRef(item_type, count, start, r.pos)


def _check_alignment(meta: GGUFMeta) -> None:
    key = gguf.Keys.General.ALIGNMENT
    if key not in meta.kv:
        return
    if meta.types[key] != ValueType.UINT32:
        raise ModelFormatError(f"GGUF {key} must be a u32 (llama.cpp refuses type {meta.types[key]})")
    a = meta.kv[key]
    if a == 0 or a & (a - 1):
        raise ModelFormatError(f"GGUF {key} is {a}, not a power of two")


# -- the tensor table ------------------------------------------------------------------------------


def _tensor_info(r: _Cursor, i: int) -> TensorInfo:
    name = r.string(GGML_MAX_NAME, f"name of tensor {i}")
    if len(name.encode()) >= GGML_MAX_NAME:
        raise ModelFormatError(
            f"GGUF tensor name {name!r} is {len(name.encode())} bytes; llama.cpp allows {GGML_MAX_NAME - 1}"
        )
    n_dims = r.unpack("<I", f"dimension count of {name}")
    if n_dims > GGML_MAX_DIMS:
        raise ModelFormatError(f"GGUF tensor {name} has {n_dims} dimensions; ggml allows at most {GGML_MAX_DIMS}")
    shape = tuple(r.unpack("<q", f"shape of {name}") for _ in range(n_dims))
    ggml_type = r.unpack("<I", f"type of {name}")
    offset = r.unpack("<Q", f"offset of {name}")
    _check_shape(name, shape)
    return TensorInfo(name, shape, _known_type(name, ggml_type), offset)


def _check_shape(name: str, shape: tuple[int, ...]) -> None:
    if any(d <= 0 for d in shape):
        raise ModelFormatError(f"GGUF tensor {name} has shape {shape}: a dimension is zero or negative")
    n = 1
    for d in shape:
        n *= d
        if n > INT64_MAX:
            raise ModelFormatError(f"GGUF tensor {name} with shape {shape} has more than 2**63 elements")


def _known_type(name: str, ggml_type: int) -> int:
    try:
        qtype = gguf.GGMLQuantizationType(ggml_type)
        if qtype in gguf.GGML_QUANT_SIZES:
            return qtype
    except ValueError:
        pass
    known = ", ".join(t.name for t in gguf.GGML_QUANT_SIZES)
    raise ModelFormatError(f"GGUF tensor {name} has unknown ggml type {ggml_type} (known: {known})")
