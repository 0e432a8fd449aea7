"""validate_gguf: the whole bounded check of a GGUF file, header and tensor table only (data never read)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import ModelFormatError
from edge.formats.gguf import _mapped
from edge.formats.validate.gguf_kv import read_header
from edge.formats.validate.gguf_tensors import check_layout, data_start, read_tensor_infos
from edge.formats.validate.gguf_vocab import check_vocab
from edge.lightimport import gguf_constants

gguf = gguf_constants()  # the enums and tables only: no reader, writer or numpy (edge.lightimport)


@dataclass(frozen=True)
class GGUFSummary:
    """What a valid GGUF file holds, as far as the header tells."""

    path: Path
    file_size: int
    version: int
    n_kv: int
    n_tensors: int
    alignment: int
    data_offset: int  # file offset of the tensor data section
    data_size: int  # bytes of tensor data (with alignment padding)
    architecture: str
    tokenizer_model: str
    tokenizer_pre: str
    n_vocab: int
    parameter_count: int
    tensor_types: dict[str, int] = field(default_factory=dict)  # ggml type name -> number of tensors
    warnings: tuple[str, ...] = ()  # accepted oddities worth a log line


def validate_gguf(path: Path) -> GGUFSummary:
    """Check a GGUF file before llama.cpp or gguf's reader sees it; ModelFormatError names the first problem."""
    path = Path(path)
    if path.is_dir():
        raise ModelFormatError(f"{path} is a folder, not a GGUF file")
    try:
        with _mapped(path) as r:
            return _validate(path, r)
    except ModelFormatError as e:
        raise ModelFormatError(f"{path.name}: {e.message}") from None


def _validate(path: Path, r) -> GGUFSummary:
    h = read_header(r)
    tensors = read_tensor_infos(r, h.n_tensors)
    start = data_start(r.pos, h.alignment, h.n_tensors)
    data_size = check_layout(tensors, start, r.size, h.alignment)
    arch = h.kv.get(gguf.Keys.General.ARCHITECTURE)
    if not isinstance(arch, str) or not arch:
        raise ModelFormatError(f"GGUF file has no {gguf.Keys.General.ARCHITECTURE}; llama.cpp cannot load it")
    vocab = check_vocab(r, h, tensors)
    return GGUFSummary(
        path=path, file_size=r.size, version=h.version, n_kv=len(h.kv), n_tensors=h.n_tensors,
        alignment=h.alignment, data_offset=start, data_size=data_size, architecture=arch,
        tokenizer_model=vocab.model, tokenizer_pre=vocab.pre, n_vocab=vocab.size,
        parameter_count=sum(_elements(t.shape) for t in tensors),
        tensor_types=dict(Counter(t.type_name for t in tensors)), warnings=vocab.warnings,
    )  # fmt: skip


def _elements(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
