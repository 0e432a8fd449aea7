"""Read a SentencePiece tokenizer.model without the sentencepiece package.

The file is a protobuf ModelProto; we need only:
  1 pieces (repeated SentencePiece: 1 piece string, 2 score float, 3 type enum)
  3 normalizer_spec (3 add_dummy_prefix bool, default true)
and from 2 trainer_spec: 35 byte_fallback (informational).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from edge.errors import ModelFormatError

V = TypeVar("V", int, bytes, float)

# sentencepiece ModelProto.SentencePiece.Type -> gguf.TokenType (same numbering, 1..6)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class SpmModel:
    pieces: list[str]
    scores: list[float]
    types: list[int]
    add_dummy_prefix: bool = True


def read_spm(path: Path) -> SpmModel:
    data = Path(path).read_bytes()
    m = SpmModel([], [], [])
    try:
        for field, value in _fields(data):
            if field == 1:
                p, s, t = _piece(_typed(value, bytes))
                m.pieces.append(p)
                m.scores.append(s)
                m.types.append(t)
            elif field == 3:
                for f2, v2 in _fields(_typed(value, bytes)):
                    if f2 == 3:
                        m.add_dummy_prefix = bool(v2)
    except (IndexError, struct.error, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{path} is not a valid SentencePiece model ({e}); re-download tokenizer.model") from e
    if not m.pieces:
        raise ModelFormatError(f"{path} holds no SentencePiece pieces")
    return m


def _piece(buf: bytes) -> tuple[str, float, int]:
    piece, score, typ = "", 0.0, NORMAL
    for f, v in _fields(buf):
        if f == 1:
            piece = _typed(v, bytes).decode("utf-8")
        elif f == 2:
            score = _typed(v, float)
        elif f == 3:
            typ = _typed(v, int)
    return piece, score, typ


def _typed(value: int | bytes | float, kind: type[V]) -> V:
    """A field's value if its wire type is the one the schema gives (a crafted file may differ)."""
    if not isinstance(value, kind):
        raise IndexError(f"a field holds {type(value).__name__}, the schema says {kind.__name__}")
    return value


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes | float]]:
    """Yield (field_number, value) of a protobuf message; bytes for length-delimited, float for fixed32."""
    i, n = 0, len(buf)
    v: int | bytes | float
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(buf, i)
        elif wire == 2:
            ln, i = _varint(buf, i)
            if i + ln > n:
                raise IndexError("length past end of message")
            v, i = buf[i : i + ln], i + ln
        elif wire == 5:
            v, i = struct.unpack_from("<f", buf, i)[0], i + 4
        elif wire == 1:
            v, i = struct.unpack_from("<d", buf, i)[0], i + 8
        else:
            raise IndexError(f"unsupported wire type {wire}")
        yield field, v


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, i
        shift += 7
