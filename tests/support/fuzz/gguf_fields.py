"""Take a real GGUF header apart and put it back together, to craft malformed files (tests only).

An independent little walker (not edge.formats.validate's), trusting the real bundled files it is used on.
`Layout` keeps every key/value as raw bytes and every tensor info as fields; `write()` emits a
header and makes the file as long as the data section needs, sparse: the data is never copied
(the validator never reads it), so each crafted 100-250 MB file costs only its header on disk.
`fields()` lists the byte positions of every structural field (counts, lengths, types, offsets).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import gguf

VT = gguf.GGUFValueType
SCALAR_FMT = {VT.UINT8: "<B", VT.INT8: "<b", VT.UINT16: "<H", VT.INT16: "<h", VT.UINT32: "<I", VT.INT32: "<i",
              VT.FLOAT32: "<f", VT.BOOL: "<?", VT.UINT64: "<Q", VT.INT64: "<q", VT.FLOAT64: "<d"}  # fmt: skip


@dataclass
class Tensor:
    name: bytes
    dims: list[int]  # ggml order, ne[0] first
    ggml_type: int
    offset: int


@dataclass
class Layout:
    version: int
    kv: list[tuple[bytes, int, bytes]]  # (key, value type, raw value bytes)
    tensors: list[Tensor]
    data_size: int  # bytes from the data section start to the end of the file
    alignment: int = 32
    extra_tensor_count: int = 0  # declared count = len(tensors) + this

    def copy(self) -> Layout:
        return replace(self, kv=list(self.kv), tensors=[replace(t, dims=list(t.dims)) for t in self.tensors])

    def index(self, key: str) -> int:
        return next(i for i, (k, _, _) in enumerate(self.kv) if k == key.encode())

    def set(self, key: str, vtype: int, raw: bytes) -> None:
        try:
            self.kv[self.index(key)] = (key.encode(), vtype, raw)
        except StopIteration:
            self.kv.append((key.encode(), vtype, raw))

    def drop(self, key: str) -> None:
        del self.kv[self.index(key)]

    def strings(self, key: str) -> list[bytes]:
        return decode_strings(self.kv[self.index(key)][2])

    def header(self) -> bytes:
        out = [b"GGUF", struct.pack("<IQQ", self.version, len(self.tensors) + self.extra_tensor_count, len(self.kv))]
        for k, vt, raw in self.kv:
            out += [enc_str(k), struct.pack("<I", vt), raw]
        for t in self.tensors:
            out += [enc_str(t.name), struct.pack("<I", len(t.dims)), struct.pack(f"<{len(t.dims)}q", *t.dims),
                    struct.pack("<IQ", t.ggml_type, t.offset)]  # fmt: skip
        return b"".join(out)

    def write(self, path: Path) -> Path:
        head = self.header()
        start = -(-len(head) // self.alignment) * self.alignment if self.tensors else len(head)
        with open(path, "wb") as f:
            f.write(head)
            f.truncate(start + self.data_size)  # sparse zeros: the data is not read
        return path


def enc_str(b: bytes | str) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<Q", len(b)) + b


def enc_array(item_type: int, items: list) -> bytes:
    """Raw bytes of an array value (after its u32 value type): item type, count, items."""
    if item_type == VT.STRING:
        body = b"".join(enc_str(x) for x in items)
    else:
        body = b"".join(struct.pack(SCALAR_FMT[item_type], x) for x in items)
    return struct.pack("<IQ", item_type, len(items)) + body


def decode_strings(raw: bytes) -> list[bytes]:
    item_type, n = struct.unpack_from("<IQ", raw)
    assert item_type == VT.STRING
    pos, out = 12, []
    for _ in range(n):
        (m,) = struct.unpack_from("<Q", raw, pos)
        out.append(raw[pos + 8 : pos + 8 + m])
        pos += 8 + m
    return out


def decode_scalars(raw: bytes) -> list:
    item_type, n = struct.unpack_from("<IQ", raw)
    fmt = SCALAR_FMT[VT(item_type)]
    return list(struct.unpack_from(f"<{n}{fmt[1]}", raw, 12))


class _Cursor:
    def __init__(self, data: bytes):
        self.data, self.pos, self.fields = data, 0, []

    def take(self, fmt: str, name: str | None = None):
        (v,) = struct.unpack_from(fmt, self.data, self.pos)
        if name:
            self.fields.append((name, self.pos, fmt))
        self.pos += struct.calcsize(fmt)
        return v

    def string(self, name: str | None = None) -> bytes:
        n = self.take("<Q", name)
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def value(self, vt: int, key: str) -> None:
        if vt == VT.STRING:
            self.string(f"{key}: string length" if key else None)
        elif vt == VT.ARRAY:
            it = self.take("<I", key and f"{key}: item type")
            n = self.take("<Q", key and f"{key}: item count")
            for i in range(n):
                self.value(it, f"{key}[{i}]" if i < 2 else "")  # record the first items' lengths only
        else:
            self.pos += struct.calcsize(SCALAR_FMT[VT(vt)])


def parse(path: Path, head_bytes: int = 16 << 20) -> tuple[Layout, list[tuple[str, int, str]], int]:
    """(layout, structural fields as (name, file offset, struct format), end of the tensor table)."""
    with open(path, "rb") as f:
        data = f.read(head_bytes)
    size = os.path.getsize(path)
    c = _Cursor(data)
    c.pos = 4
    version = c.take("<I", "version")
    n_tensors, n_kv = c.take("<Q", "tensor count"), c.take("<Q", "key count")
    kv = []
    for i in range(n_kv):
        key = c.string(f"key {i}: length")
        vt = c.take("<I", f"{key.decode()}: value type")
        start = c.pos
        c.value(vt, key.decode())
        kv.append((key, vt, data[start : c.pos]))
    tensors = []
    for i in range(n_tensors):
        tag = f"tensor {i}" if i < 3 or i == n_tensors - 1 else ""
        name = c.string(tag and f"{tag}: name length")
        n_dims = c.take("<I", tag and f"{tag}: n_dims")
        dims = [c.take("<q", tag and f"{tag}: dim {j}") for j in range(n_dims)]
        tensors.append(
            Tensor(name, dims, c.take("<I", tag and f"{tag}: ggml type"), c.take("<Q", tag and f"{tag}: offset"))
        )
    table_end = c.pos
    align = next((struct.unpack("<I", raw)[0] for k, vt, raw in kv if k == b"general.alignment"), 32)
    start = -(-table_end // align) * align
    fields = [f for f in c.fields if f[0]]
    return Layout(version, kv, tensors, size - start, align), fields, table_end
