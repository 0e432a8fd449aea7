"""`edge-quantize unpack MODEL.gguf -o DIR`: GGUF -> Hugging Face checkpoint folder.

Writes model.safetensors (quantized tensors dequantized to F32, float tensors kept in their type),
config.json rebuilt from the GGUF metadata through the architecture's tables, the files the
architecture keeps beside it (a BERT encoder's sentence-transformers pooling), and the tokenizer
files (vocab.write_hf_tokenizer). The architecture's transforms are undone (q/k permutation,
Gemma's +1). The folder appears atomically: it is filled under a temp name and renamed at the end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from edge.errors import ModelFormatError, NotFoundError
from edge.formats.gguf import TensorInfo, open_gguf
from edge.formats.validate import validate_gguf
from edge.fsio import atomic_folder

from .archs import get_arch_for_gguf
from .archs.base import ArchSpec
from .checkpoint import OutEntry, write_safetensors
from .gguf_out import to_storage
from .progress import Bars, warn

Q = gguf.GGMLQuantizationType
KEEP = {Q.F32: "F32", Q.F16: "F16", Q.BF16: "BF16"}  # float types written as they are
GENERATED = tuple(
    gguf.TENSOR_NAMES[t]
    for t in (  # made from config, not weights
        gguf.MODEL_TENSOR.ROPE_FREQS,
        gguf.MODEL_TENSOR.ROPE_FACTORS_LONG,
        gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT,
    )
)


def unpack(gguf_path: Path, out_dir: Path, *, force: bool = False, quiet: bool = False) -> Path:
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    from . import vocab as vocab_mod  # owned by the vocab stream

    kv, tensors, data = read_gguf(gguf_path)
    spec = get_arch_for_gguf(str(kv.get(gguf.Keys.General.ARCHITECTURE)))
    config = hf_config(spec, kv, tensors, data)
    cfg = spec.load_config(config)
    entries = _entries(spec, cfg, tensors, data)
    vocab = vocab_mod.vocab_from_gguf(gguf_path)
    config.update({f"{k}_token_id": v for k, v in vocab.special_ids.items() if k in ("bos", "eos", "pad")})
    sidecar = spec.write_sidecar(config)  # e.g. sentence-transformers' pooling files (pops its fields)
    with Bars(quiet) as bars, atomic_folder(out_dir, force=force) as tmp:
        task = bars.add(f"unpack {gguf_path.name}", total=len(entries))
        write_safetensors(tmp / "model.safetensors", entries, on_tensor=lambda e: bars.advance(task))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        for rel, value in sidecar.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
        vocab_mod.write_hf_tokenizer(vocab, tmp)
    return out_dir


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, TensorInfo], TensorData]:
    """(metadata without the vocabulary, tensor table by name, tensor data) of a validated GGUF file."""
    if not path.is_file():
        raise NotFoundError(f"{path} does not exist")
    for w in validate_gguf(path).warnings:  # bounds, layout and vocabulary, before any offset is trusted
        warn(f"{path.name}: {w}")
    with open_gguf(path) as f:
        kv = {k: f.value(k) for k in f.meta.kv if not k.startswith("tokenizer.")}
        tensors = {t.name: t for t in f.tensors}
        return kv, tensors, TensorData(path, f.meta.data_offset)


class TensorData:
    """The tensor data section, mapped read-only; offsets come from a validated tensor table."""

    def __init__(self, path: Path, data_offset: int):
        self.mm = np.memmap(path, dtype=np.uint8, mode="r")
        self.start = data_offset

    def raw(self, t: TensorInfo) -> np.ndarray:
        """The stored bytes, (*reversed(shape[1:]), bytes per row): the layout gguf.quants.dequantize takes."""
        block, type_size = gguf.GGML_QUANT_SIZES[Q(t.ggml_type)]
        begin = self.start + t.offset
        return self.mm[begin : begin + t.nbytes].reshape(*reversed(t.shape[1:]), t.shape[0] // block * type_size)

    def floats(self, t: TensorInfo) -> np.ndarray:
        """(reversed(shape)) float32."""
        return gguf.quants.dequantize(self.raw(t), Q(t.ggml_type))


def hf_config(spec: ArchSpec, kv: dict[str, Any], tensors: dict[str, TensorInfo], data: TensorData) -> dict[str, Any]:
    config = spec.config_from_gguf(kv)
    embd = tensors.get(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight")
    if "vocab_size" not in config and embd is not None:
        config["vocab_size"] = int(embd.shape[-1])  # gguf shapes are (n_embd, n_vocab)
    config["tie_word_embeddings"] = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.OUTPUT] + ".weight" not in tensors
    generated = {n: data.floats(t) for n, t in tensors.items() if n.startswith(GENERATED)}
    for name in sorted(set(generated) - set(spec.tensors_to_config(generated, config))):
        warn(
            f"{name} is derived from rope scaling settings that GGUF does not keep; "
            "config.json gets no rope_scaling for it"
        )
    config["torch_dtype"] = "float32"
    return config


def _entries(spec: ArchSpec, cfg: Any, tensors: dict[str, TensorInfo], data: TensorData) -> list[OutEntry]:
    names = spec.hf_names(cfg)
    out = []
    for name, t in tensors.items():
        if name not in names:
            if name.startswith(GENERATED):  # back in config.json, or warned about, by hf_config
                continue
            raise ModelFormatError(f"tensor {name!r} is not part of the {spec.model_type} layout; cannot unpack")
        hf_name, rule = names[name]
        shape = tuple(int(d) for d in reversed(t.shape))  # numpy order
        dtype = KEEP.get(Q(t.ggml_type), "F32")
        out.append(OutEntry(hf_name, dtype, shape, _loader(data, t, shape, dtype, rule, cfg)))
    return out


def _loader(data: TensorData, t: TensorInfo, shape: tuple[int, ...], dtype: str, rule: Any, cfg: Any):
    def load() -> np.ndarray:
        if rule.transform is None and dtype != "F32":
            raw = data.raw(t).reshape(-1)  # the stored bytes, exact
            return raw.view("<u2" if dtype == "BF16" else "<f2").reshape(shape)
        values = data.floats(t).reshape(shape)  # (GGUF layout) float32
        if rule.transform is not None:
            values = rule.transform.inverse(values, cfg)
        if dtype == "F16":
            return values.astype(np.float16)
        if dtype == "BF16":
            return to_storage(values, Q.BF16)
        return values.astype(np.float32)

    return load
