"""A lean, bounds-checked reader of a GGUF file's metadata (key/value section only).

gguf.GGUFReader builds a numpy view per string, which takes ~20 s for SmolLM2's 49152 tokens
and more for Gemma-3's 262144; it also trusts length fields. This reads the KV section with
struct/numpy, checks every length against the file size, and never touches tensor data.

Layout (GGUF v2/v3, little endian): magic "GGUF", u32 version, u64 n_tensors, u64 n_kv, then
n_kv times: key (u64 len + utf-8), u32 value type, value. Strings are u64 len + bytes; arrays
are u32 item type + u64 count + items.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import numpy as np

from edge.errors import ModelFormatError

_NUM = {
    0: np.uint8,
    1: np.int8,
    2: np.uint16,
    3: np.int16,
    4: np.uint32,
    5: np.int32,
    6: np.float32,
    7: np.bool_,
    10: np.uint64,
    11: np.int64,
    12: np.float64,
}
_STRING, _ARRAY = 8, 9


def read_metadata(path: Path) -> dict[str, object]:
    """All metadata keys of a GGUF file; arrays of numbers as numpy arrays, of strings as lists."""
    path = Path(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            return _Parser(buf).metadata()
        except (struct.error, ValueError, UnicodeDecodeError) as e:
            raise ModelFormatError(f"{path} is not a valid GGUF file ({e}); re-download or re-convert it") from e


class _Parser:
    def __init__(self, buf):
        self.buf, self.pos, self.size = buf, 0, len(buf)

    def metadata(self) -> dict[str, object]:
        if self.take(4) != b"GGUF":
            raise ValueError("bad magic")
        (version,) = self.unpack("<I")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        _n_tensors, n_kv = self.unpack("<QQ")
        self.need(n_kv * 13)  # each KV takes at least 13 bytes: a bound before looping
        out: dict[str, object] = {}
        for _ in range(n_kv):
            key = self.string()
            (typ,) = self.unpack("<I")
            out[key] = self.value(typ)
        return out

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise ValueError(f"length {n} at offset {self.pos} runs past the end of the file")

    def take(self, n: int) -> bytes:
        self.need(n)
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def string(self) -> str:
        (n,) = self.unpack("<Q")
        return self.take(n).decode("utf-8", errors="surrogateescape")

    def value(self, typ: int):
        if typ in _NUM:
            v = np.frombuffer(self.take(np.dtype(_NUM[typ]).itemsize), dtype=_NUM[typ])[0]
            return v.item()
        if typ == _STRING:
            return self.string()
        if typ == _ARRAY:
            item, n = self.unpack("<IQ")
            if item in _NUM:
                dt = np.dtype(_NUM[item])
                return np.frombuffer(self.take(n * dt.itemsize), dtype=dt).copy()  # (n,)
            if item == _STRING:
                self.need(n * 8)
                return [self.string() for _ in range(n)]
            if item == _ARRAY:
                self.need(n * 12)
                return [self.value(_ARRAY) for _ in range(n)]
        raise ValueError(f"unknown GGUF value type {typ}")
