"""Lazy reader of Hugging Face safetensors checkpoints (one file, several files, or a sharded index).

The safetensors format: 8-byte little-endian header length N, N bytes of JSON
{"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
then the data; offsets are relative to the first byte after the header. Headers are parsed here,
with every length and offset checked against the file size before anything is mapped, so a
truncated or crafted file gives a ModelFormatError naming the file and the tensor.

Tensors are memory-mapped one at a time (`np.memmap` per tensor, released with the array), so
peak memory is one tensor, not the model. bf16 is read as uint16 and widened to float32 with numpy.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import ModelFormatError, NotFoundError

MAX_HEADER = 100 * 1024 * 1024  # a header is JSON names and shapes; 100 MB is far beyond any real model

# safetensors dtype -> numpy dtype of the stored bytes
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives: absolute byte range [start, end) in `file`."""

    name: str
    file: Path
    dtype: str  # safetensors dtype name, e.g. "BF16"
    shape: tuple[int, ...]  # numpy order
    start: int
    end: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def read_header(path: Path) -> dict[str, TensorRef]:
    """Parse and bounds-check one .safetensors header."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFormatError(f"{path}: too short to be a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, MAX_HEADER):
            raise ModelFormatError(
                f"{path}: header length {n} points past the end of the file ({size} bytes); "
                "the file is truncated or not safetensors"
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFormatError(f"{path}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: safetensors header is not a JSON object")
    base, data_len = 8 + n, size - 8 - n
    return {
        name: _tensor_ref(path, name, info, base, data_len) for name, info in header.items() if name != "__metadata__"
    }


def _tensor_ref(path: Path, name: str, info: object, base: int, data_len: int) -> TensorRef:
    def bad(why: str) -> ModelFormatError:
        return ModelFormatError(f"{path}: tensor {name!r} {why}; the checkpoint is corrupt or truncated")

    if not isinstance(info, dict):
        raise bad("has no header entry")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPES:
        raise bad(f"has unsupported dtype {dtype!r}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise bad(f"has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise bad(f"has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise bad(f"has data_offsets {offsets} pointing past the end of the file (data section is {data_len} bytes)")
    want = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
    if end - begin != want:
        raise bad(f"spans {end - begin} bytes but its shape {shape} and dtype {dtype} need {want}")
    return TensorRef(name, path, dtype, tuple(shape), base + begin, base + end)


class Checkpoint:
    """The tensors of an HF checkpoint folder, read lazily."""

    def __init__(self, refs: dict[str, TensorRef]):
        self.refs = refs

    @classmethod
    def open(cls, src_dir: Path) -> Checkpoint:
        refs: dict[str, TensorRef] = {}
        for file in _weight_files(src_dir):
            for name, ref in read_header(file).items():
                if name in refs:
                    raise ModelFormatError(f"tensor {name!r} is stored twice ({refs[name].file.name}, {file.name})")
                refs[name] = ref
        return cls(refs)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: ref.shape for name, ref in self.refs.items()}

    def float_dtype(self) -> str:
        """The dtype most of the weights are stored in: "F32", "F16" or "BF16"."""
        counts: dict[str, int] = {}
        for ref in self.refs.values():
            if ref.dtype in ("F32", "F16", "BF16", "F64") and len(ref.shape) >= 2:
                counts[ref.dtype] = counts.get(ref.dtype, 0) + ref.n_elements
        best = max(counts, key=counts.__getitem__, default="F32")
        return "F32" if best == "F64" else best

    def load(self, name: str) -> np.ndarray:
        """The tensor as float32 (a memory-mapped view when already F32, else a converted copy)."""
        ref = self.refs[name]
        stored = DTYPES[ref.dtype]
        if ref.n_elements == 0:
            return np.zeros(ref.shape, dtype=np.float32)
        raw = np.memmap(ref.file, dtype=stored, mode="r", offset=ref.start, shape=ref.shape)
        if ref.dtype == "BF16":  # bf16 = the top half of an f32; one allocation, no uint32 temporary
            out = np.empty(ref.shape, dtype=np.uint32)
            np.left_shift(raw, 16, out=out, dtype=np.uint32)
            return out.view(np.float32)
        return raw if ref.dtype == "F32" else raw.astype(np.float32)


def _weight_files(src_dir: Path) -> list[Path]:
    index = src_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ModelFormatError(f"{index}: not a valid safetensors index ({exc})") from None
        files = sorted({src_dir / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise NotFoundError(f"{index.name} lists shard(s) that are missing: {', '.join(missing)}")
        return files
    files = sorted(src_dir.glob("*.safetensors"))
    if not files:
        extra = (
            " (pytorch_model.bin checkpoints are not supported: re-save with safetensors)"
            if any(src_dir.glob("*.bin"))
            else ""
        )
        raise NotFoundError(f"no *.safetensors weights in {src_dir}{extra}")
    return files


# -- writing (used by unpack) ------------------------------------------------------------------


@dataclass(frozen=True)
class OutEntry:
    """A tensor to write: name, safetensors dtype, shape (numpy order) and a loader."""

    name: str
    dtype: str  # "F32" | "F16" | "BF16" (BF16 loaders return the uint16 bits)
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]


def write_safetensors(path: Path, entries: list[OutEntry], on_tensor=lambda e: None) -> None:
    """Stream a .safetensors file: header first (all sizes are known), then one tensor at a time."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for e in entries:
        nbytes = int(np.prod(e.shape, dtype=np.int64)) * DTYPES[e.dtype].itemsize
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for e in entries:
            data = np.ascontiguousarray(e.load(), dtype=DTYPES[e.dtype])
            if data.shape != e.shape:
                raise AssertionError(f"{e.name}: produced {list(data.shape)}, declared {list(e.shape)}")
            data.tofile(f)
            on_tensor(e)
