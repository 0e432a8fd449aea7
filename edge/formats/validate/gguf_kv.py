"""Walk the key/value section of a GGUF file with every length checked before it is used.

Built on edge.formats.gguf's cursor (`_Reader`: each read checked against the end of the file).
Scalars and strings are kept; arrays are kept as `ArrayRef` (item type, count, file offset of the
first item) so that the vocabulary checks can decode the few arrays they need, bounded, later.
Rules mirror ggml's gguf.cpp: no empty or duplicate keys, known value types only, no nested arrays
(ggml refuses them), general.alignment a u32 power of two.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from edge.errors import ModelFormatError
from edge.formats.gguf import (
    _SCALARS,
    MAX_ARRAY_ITEMS,
    MAX_KEY_BYTES,
    MAX_KV,
    MAX_STRING_BYTES,
    MAX_TENSORS,
    VT,
    _Reader,
)
from edge.lightimport import gguf_constants

gguf = gguf_constants()  # the enums and tables only: no reader, writer or numpy (edge.lightimport)

MAX_STRING_ITEMS = 1 << 23  # all string-array items of a file together (vocab + merges < 1M in real models)
DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT
HEADER_BYTES = 4 + 4 + 8 + 8  # magic | version u32 | tensor_count u64 | kv_count u64

# Keys llama.cpp reads with a fixed type (its GGUFMeta refuses any other): "{arch}" filled from the file.
_L, _A, _R, _T = gguf.Keys.LLM, gguf.Keys.Attention, gguf.Keys.Rope, gguf.Keys.Tokenizer
KEY_TYPES: dict[str, tuple[int, ...]] = {
    gguf.Keys.General.ARCHITECTURE: (VT.STRING,),
    gguf.Keys.General.FILE_TYPE: (VT.UINT32,),
    gguf.Keys.General.QUANTIZATION_VERSION: (VT.UINT32,),
    _L.VOCAB_SIZE: (VT.UINT32,), _L.CONTEXT_LENGTH: (VT.UINT32,), _L.EMBEDDING_LENGTH: (VT.UINT32,),
    _L.BLOCK_COUNT: (VT.UINT32,), _L.FEED_FORWARD_LENGTH: (VT.UINT32, VT.ARRAY),
    _A.HEAD_COUNT: (VT.UINT32, VT.ARRAY), _A.HEAD_COUNT_KV: (VT.UINT32, VT.ARRAY),
    _A.KEY_LENGTH: (VT.UINT32,), _A.VALUE_LENGTH: (VT.UINT32,), _A.SLIDING_WINDOW: (VT.UINT32,),
    _A.LAYERNORM_EPS: (VT.FLOAT32,), _A.LAYERNORM_RMS_EPS: (VT.FLOAT32,),
    _R.DIMENSION_COUNT: (VT.UINT32,), _R.FREQ_BASE: (VT.FLOAT32,),
    _T.MODEL: (VT.STRING,), _T.PRE: (VT.STRING,), _T.CHAT_TEMPLATE: (VT.STRING,),
    _T.ADD_BOS: (VT.BOOL,), _T.ADD_EOS: (VT.BOOL,), _T.ADD_SEP: (VT.BOOL,), _T.ADD_PREFIX: (VT.BOOL,),
    _T.REMOVE_EXTRA_WS: (VT.BOOL,),
}  # fmt: skip


@dataclass(frozen=True)
class ArrayRef:
    """An array value: its items start at `offset`; strings are decoded on demand (edge.formats.validate.gguf_vocab)."""

    item_type: int
    count: int
    offset: int  # file offset of the first item
    end: int  # file offset just past the last item


@dataclass
class Header:
    version: int
    n_tensors: int
    kv: dict[str, Any]  # key -> scalar | str | ArrayRef
    types: dict[str, int]  # key -> GGUFValueType of the value
    end: int  # file offset just past the key/value section (the tensor infos start here)

    @property
    def alignment(self) -> int:
        return int(self.kv.get(gguf.Keys.General.ALIGNMENT, DEFAULT_ALIGNMENT))


def read_header(r: _Reader) -> Header:
    """Magic, version, counts and every key/value, or ModelFormatError naming the first problem."""
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
    header = Header(version, n_tensors, {}, {}, 0)
    budget = [MAX_STRING_ITEMS]
    for i in range(n_kv):
        key = r.string(MAX_KEY_BYTES, f"key {i}")
        if not key:
            raise ModelFormatError(f"GGUF key {i} is empty")
        if key in header.kv:
            raise ModelFormatError(f"GGUF key {key} appears twice; llama.cpp refuses such a file")
        vtype = r.unpack("<I", f"type of {key}")
        header.types[key] = vtype
        header.kv[key] = _value(r, vtype, key, budget)
    _check_alignment(header)
    _check_key_types(header)
    header.end = r.pos
    return header


def _value(r: _Reader, vtype: int, key: str, budget: list[int]) -> Any:
    if vtype in _SCALARS:
        return r.unpack(_SCALARS[vtype], key)
    if vtype == VT.STRING:
        return r.string(MAX_STRING_BYTES, f"value of {key}")
    if vtype == VT.ARRAY:
        return _array(r, key, budget)
    raise ModelFormatError(f"GGUF key {key} has an unknown value type {vtype} (valid: 0..12)")


def _array(r: _Reader, key: str, budget: list[int]) -> ArrayRef:
    item_type, count = r.unpack("<I", f"item type of {key}"), r.unpack("<Q", f"length of {key}")
    if item_type == VT.ARRAY:
        raise ModelFormatError(f"GGUF key {key} is an array of arrays; llama.cpp does not read nested arrays")
    if item_type not in _SCALARS and item_type != VT.STRING:
        raise ModelFormatError(f"GGUF array {key} has an unknown item type {item_type} (valid: 0..12)")
    if count > MAX_ARRAY_ITEMS:
        raise ModelFormatError(f"GGUF array {key} declares {count} items; the limit is {MAX_ARRAY_ITEMS}")
    start = r.pos
    if item_type == VT.STRING:
        r.need(8 * count, key)  # each item has at least its u64 length
        budget[0] -= count
        if budget[0] < 0:
            raise ModelFormatError(f"GGUF string arrays hold more than {MAX_STRING_ITEMS} items in total (at {key})")
        r.skip_strings(count, key)
    else:
        r.skip(struct.calcsize(_SCALARS[item_type]) * count, key)
    return ArrayRef(item_type, count, start, r.pos)


def _check_alignment(header: Header) -> None:
    key = gguf.Keys.General.ALIGNMENT
    if key not in header.kv:
        return
    if header.types[key] != VT.UINT32:
        raise ModelFormatError(f"GGUF {key} must be a u32 (llama.cpp refuses type {header.types[key]})")
    a = header.kv[key]
    if a == 0 or a & (a - 1):
        raise ModelFormatError(f"GGUF {key} is {a}, not a power of two")


def _check_key_types(header: Header) -> None:
    arch = header.kv.get(gguf.Keys.General.ARCHITECTURE)
    for template, allowed in KEY_TYPES.items():
        key = template.format(arch=arch) if "{arch}" in template else template
        if key in header.types and header.types[key] not in allowed:
            want = " or ".join(VT(t).name.lower() for t in allowed)
            raise ModelFormatError(
                f"GGUF {key} must be a {want}, found {_type_name(header.types[key])}; llama.cpp refuses it"
            )


def _type_name(vtype: int) -> str:
    return VT(vtype).name.lower()
