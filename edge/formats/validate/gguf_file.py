"""validate_gguf: the whole bounded check of a GGUF file, header and tensor table only (data never read)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import ModelFormatError
from edge.formats.gguf import GGUFFile, open_gguf
from edge.formats.validate.gguf_kv import check_key_types
from edge.formats.validate.gguf_tensors import check_layout, check_tensors
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
        with open_gguf(path) as f:  # the bounded reader: header, key/values and tensor table
            return _validate(f)
    except ModelFormatError as e:
        raise ModelFormatError(f"{path.name}: {e.message}") from None


def _validate(f: GGUFFile) -> GGUFSummary:
    meta = f.meta
    check_key_types(meta)
    check_tensors(f.tensors)
    data_size = check_layout(f.tensors, meta.data_offset, f.size, meta.alignment)
    arch = meta.kv.get(gguf.Keys.General.ARCHITECTURE)
    if not isinstance(arch, str) or not arch:
        raise ModelFormatError(f"GGUF file has no {gguf.Keys.General.ARCHITECTURE}; llama.cpp cannot load it")
    vocab = check_vocab(f)
    return GGUFSummary(
        path=f.path, file_size=f.size, version=meta.version, n_kv=len(meta.kv), n_tensors=meta.tensor_count,
        alignment=meta.alignment, data_offset=meta.data_offset, data_size=data_size, architecture=arch,
        tokenizer_model=vocab.model, tokenizer_pre=vocab.pre, n_vocab=vocab.size,
        parameter_count=meta.parameter_count or 0,
        tensor_types=dict(Counter(t.type_name for t in f.tensors)), warnings=vocab.warnings,
    )  # fmt: skip
