"""The tensor-info table of a GGUF file and the layout of its data section, checked as ggml does.

Per tensor (gguf.cpp): name < GGML_MAX_NAME bytes and unique | n_dims <= GGML_MAX_DIMS | each
dimension an int64 >= 0 | element count < INT64_MAX | a ggml type this gguf knows | ne[0] a
multiple of the type's block size | nbytes = n_elements / block_size * type_size
(gguf.GGML_QUANT_SIZES). Data section: starts at the end of the table padded to the alignment;
tensor offsets are relative to it, aligned, packed in file order (ggml refuses gaps), and the last
byte of every tensor is inside the file. The tensor data itself is never read.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.errors import ModelFormatError
from edge.formats.gguf import _Reader
from edge.lightimport import gguf_constants

gguf = gguf_constants()  # the enums and tables only: no reader, writer or numpy (edge.lightimport)

GGML_MAX_NAME = 64
GGML_MAX_DIMS = 4
INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: ne[0] (the row length) first
    ggml_type: int
    offset: int  # relative to the data section
    nbytes: int

    @property
    def type_name(self) -> str:
        return gguf.GGMLQuantizationType(self.ggml_type).name


def read_tensor_infos(r: _Reader, n_tensors: int) -> list[TensorInfo]:
    if n_tensors == 0:
        raise ModelFormatError("GGUF file holds no tensors (a vocabulary-only file?); it cannot be served or converted")
    seen: set[str] = set()
    infos = []
    for i in range(n_tensors):
        info = _tensor_info(r, i)
        if info.name in seen:
            raise ModelFormatError(f"GGUF tensor {info.name} appears twice; llama.cpp refuses such a file")
        seen.add(info.name)
        infos.append(info)
    return infos


def _tensor_info(r: _Reader, i: int) -> TensorInfo:
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
    return TensorInfo(name, shape, ggml_type, offset, _nbytes(name, shape, ggml_type))


def _nbytes(name: str, shape: tuple[int, ...], ggml_type: int) -> int:
    if any(d <= 0 for d in shape):
        raise ModelFormatError(f"GGUF tensor {name} has shape {shape}: a dimension is zero or negative")
    n = 1
    for d in shape:
        n *= d
        if n > INT64_MAX:
            raise ModelFormatError(f"GGUF tensor {name} with shape {shape} has more than 2**63 elements")
    try:
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        known = ", ".join(t.name for t in gguf.GGML_QUANT_SIZES)
        raise ModelFormatError(f"GGUF tensor {name} has unknown ggml type {ggml_type} (known: {known})") from None
    row = shape[0] if shape else 1
    if row % block:
        raise ModelFormatError(
            f"GGUF tensor {name} of type {gguf.GGMLQuantizationType(ggml_type).name} has rows of {row} elements, "
            f"not a multiple of its block size {block}"
        )
    return n // block * type_size


def data_start(table_end: int, alignment: int, n_tensors: int) -> int:
    """File offset of the data section: the end of the tensor table padded to the alignment."""
    return -(-table_end // alignment) * alignment if n_tensors else table_end


def check_layout(infos: list[TensorInfo], start: int, file_size: int, alignment: int) -> int:
    """Offsets aligned, packed in order without overlap, every tensor inside the file; returns the data size."""
    if start > file_size:
        raise ModelFormatError(
            f"GGUF file is truncated: the data section would start at byte {start}, the file has {file_size}"
        )
    expected, prev = 0, None
    for t in infos:
        if t.offset % alignment:
            raise ModelFormatError(f"GGUF tensor {t.name} is at offset {t.offset}, not aligned to {alignment} bytes")
        if t.offset < expected:
            raise ModelFormatError(
                f"GGUF tensor {t.name} (offset {t.offset}) overlaps tensor {prev} (which ends at {expected})"
            )
        if t.offset > expected:
            raise ModelFormatError(
                f"GGUF tensor {t.name} is at offset {t.offset}, expected {expected}: llama.cpp needs the tensors packed in order"
            )
        if start + t.offset + t.nbytes > file_size:
            raise ModelFormatError(
                f"GGUF file is truncated: tensor {t.name} needs bytes {start + t.offset}..{start + t.offset + t.nbytes}, "
                f"the file has {file_size}; download or convert the model again"
            )
        expected, prev = t.offset + -(-t.nbytes // alignment) * alignment, t.name
    return min(expected, file_size - start)
