"""The tensor table of a GGUF file and the layout of its data section, checked as ggml does.

edge.formats.gguf's reader already refuses, per tensor: a name of GGML_MAX_NAME bytes or more, more
than GGML_MAX_DIMS dimensions, a dimension <= 0, 2**63 elements or more, a ggml type this gguf does
not know. Checked here (gguf.cpp): names unique | ne[0] a multiple of the type's block size |
nbytes = n_elements / block_size * type_size (gguf.GGML_QUANT_SIZES). Data section: starts at the
end of the table padded to the alignment; tensor offsets are relative to it, aligned, packed in
file order (ggml refuses gaps), and the last byte of every tensor is inside the file. The tensor
data itself is never read.
"""

from __future__ import annotations

from collections.abc import Sequence

from edge.errors import ModelFormatError
from edge.formats.gguf import TensorInfo
from edge.lightimport import gguf_constants

gguf = gguf_constants()  # the enums and tables only: no reader, writer or numpy (edge.lightimport)


def check_tensors(infos: Sequence[TensorInfo]) -> None:
    if not infos:
        raise ModelFormatError("GGUF file holds no tensors (a vocabulary-only file?); it cannot be served or converted")
    seen: set[str] = set()
    for t in infos:
        if t.name in seen:
            raise ModelFormatError(f"GGUF tensor {t.name} appears twice; llama.cpp refuses such a file")
        seen.add(t.name)
        block = gguf.GGML_QUANT_SIZES[t.ggml_type][0]
        row = t.shape[0] if t.shape else 1
        if row % block:
            raise ModelFormatError(
                f"GGUF tensor {t.name} of type {t.type_name} has rows of {row} elements, "
                f"not a multiple of its block size {block}"
            )


def check_layout(infos: Sequence[TensorInfo], start: int, file_size: int, alignment: int) -> int:
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
        nbytes = t.nbytes
        if start + t.offset + nbytes > file_size:
            raise ModelFormatError(
                f"GGUF file is truncated: tensor {t.name} needs bytes {start + t.offset}..{start + t.offset + nbytes}, "
                f"the file has {file_size}; download or convert the model again"
            )
        expected, prev = t.offset + -(-nbytes // alignment) * alignment, t.name
    return min(expected, file_size - start)
