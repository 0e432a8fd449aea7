"""validate_gguf_adapter: the bounded check of a GGUF LoRA adapter, and of it against its base model.

An adapter is untrusted input like a model: before llama.cpp's `llama_adapter_lora_init` reads it,
its header and tensor table go through the same bounded reader and layout checks as a model
(gguf_file.py), and then the rules llama-adapter.cpp applies (or would crash on): `general.type`
"adapter", `adapter.type` "lora", a finite `adapter.lora.alpha`, the same architecture as the base,
tensors only in `<base tensor>.lora_a` / `.lora_b` pairs, each naming a tensor of the base, with
lora_a ne [n_in, r] and lora_b ne [r, n_out] where the base tensor is ne [n_in, n_out].
Tensor data is never read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from edge.errors import ModelFormatError
from edge.formats.gguf import open_gguf
from edge.formats.validate.gguf_kv import check_key_types
from edge.formats.validate.gguf_tensors import check_layout, check_tensors
from edge.lightimport import gguf_constants

gguf = gguf_constants()  # the enums and tables only: no reader, writer or numpy (edge.lightimport)
FLOAT_TYPES = frozenset({gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16})


@dataclass(frozen=True)
class AdapterSummary:
    path: Path
    architecture: str
    alpha: float
    rank: int  # the largest rank of its pairs
    n_pairs: int


def validate_gguf_adapter(path: Path, base: Path | None = None) -> AdapterSummary:
    """Check a GGUF LoRA adapter (and, given `base`, that it fits that GGUF model); ModelFormatError names the problem."""
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"adapter {path} is not a file")
    try:
        with open_gguf(path) as f:
            meta = f.meta
            check_key_types(meta)
            check_tensors(f.tensors)
            check_layout(f.tensors, meta.data_offset, f.size, meta.alignment)
            kv, tensors = meta.kv, {t.name: t for t in f.tensors}
        base_arch, base_shapes = _base(base) if base is not None else (None, None)
        return _check(path, kv, tensors, base_arch, base_shapes)
    except ModelFormatError as e:
        raise ModelFormatError(f"{path.name}: {e.message}") from None


def _base(base: Path) -> tuple[str, dict[str, tuple[int, ...]]]:
    with open_gguf(base) as f:
        return f.meta.architecture, {t.name: t.shape for t in f.tensors}


def _check(path: Path, kv: dict, tensors: dict, base_arch: str | None, base_shapes: dict | None) -> AdapterSummary:
    if kv.get(gguf.Keys.General.TYPE) != "adapter" or kv.get(gguf.Keys.Adapter.TYPE) != "lora":
        raise ModelFormatError('not a LoRA adapter (general.type must be "adapter" and adapter.type "lora")')
    alpha = kv.get(gguf.Keys.Adapter.LORA_ALPHA, 0.0)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ModelFormatError(f"{gguf.Keys.Adapter.LORA_ALPHA} is {alpha!r}, not a finite number")
    arch = str(kv.get(gguf.Keys.General.ARCHITECTURE, ""))
    if base_arch is not None and arch != base_arch:
        raise ModelFormatError(f"the adapter is for a {arch!r} model but the base model is {base_arch!r}")
    targets: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, t in tensors.items():
        stem, dot, part = name.rpartition(".")
        if not dot or part not in ("lora_a", "lora_b"):
            raise ModelFormatError(f"tensor {name} is neither a .lora_a nor a .lora_b")
        if t.ggml_type not in FLOAT_TYPES or len(t.shape) != 2:
            raise ModelFormatError(f"tensor {name} must be a 2-D F32, F16 or BF16 matrix")
        targets.setdefault(stem, {})[part] = t.shape
    rank = 0
    for stem, parts in targets.items():
        if len(parts) != 2:
            raise ModelFormatError(f"{stem} has a .lora_a or .lora_b without its partner")
        (n_in, r), (r_b, n_out) = parts["lora_a"], parts["lora_b"]
        if r != r_b:
            raise ModelFormatError(f"{stem}: lora_a has rank {r} but lora_b {r_b}")
        if base_shapes is not None:
            if stem not in base_shapes:
                raise ModelFormatError(f"{stem} is not a tensor of the base model: the adapter is for another model")
            if tuple(base_shapes[stem][:2]) != (n_in, n_out):
                raise ModelFormatError(
                    f"{stem} is {list(base_shapes[stem])} in the base model but the adapter's pair makes "
                    f"[{n_in}, {n_out}]: the adapter was made for another model"
                )
        rank = max(rank, r)
    return AdapterSummary(path, arch, float(alpha), rank, len(targets))
