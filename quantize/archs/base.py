"""The declarative pieces every architecture module is built from.

An architecture is an `ArchSpec`: a config dataclass, a table of `TensorRule`s (HF tensor name ->
gguf.MODEL_TENSOR, expected shape, optional `Transform`) and a table of `MetaRow`s (gguf.Keys
template <-> config attribute). The converter reads the tables forwards (HF -> GGUF), `unpack`
reads the same tables backwards (GGUF -> HF); nothing about an architecture is written twice.

Shapes are numpy order, as safetensors stores them: a Linear weight is (out_features, in_features).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import gguf
import numpy as np

from edge.errors import ModelFormatError

C = TypeVar("C", bound="ArchConfig")

Shape = tuple[int, ...]


@dataclass
class ArchConfig:
    """Base of every per-architecture config: `from_dict` ignores unknown keys.

    Subclasses declare the config.json fields they read (with defaults where HF has them) and fill
    derived values in `__post_init__`. Every subclass has `num_hidden_layers` (the block count).
    """

    if TYPE_CHECKING:  # declared by every subclass, in its own field order
        num_hidden_layers: int
        vocab_size: int

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in d and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ModelFormatError(
                f"config.json lacks {', '.join(missing)}: is this a complete Hugging Face checkpoint?"
            )
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Transform:
    """A reversible change of a tensor between HF layout and llama.cpp layout."""

    forward: Callable[[np.ndarray, Any], np.ndarray]  # (HF array, cfg) -> GGUF array
    inverse: Callable[[np.ndarray, Any], np.ndarray]  # (GGUF array, cfg) -> HF array
    out_shape: Callable[[Shape, Any], Shape] = lambda shape, cfg: shape  # GGUF shape from HF shape


@dataclass(frozen=True)
class TensorRule:
    """One row of the tensor table: where an HF tensor goes in the GGUF file."""

    hf: str  # HF name; "{bid}" stands for the block index
    tensor: gguf.MODEL_TENSOR  # GGUF name from gguf.TENSOR_NAMES
    shape: Callable[[Any], Shape]  # expected HF shape from the config
    suffix: str = ".weight"
    transform: Transform | None = None
    required: bool = True  # absent optional tensors are skipped (biases, lm_head)

    @property
    def per_block(self) -> bool:
        return "{bid}" in self.hf

    def names(self, cfg: Any) -> Iterable[tuple[int | None, str, str]]:
        """(bid, hf_name, gguf_name) for every block this rule covers."""
        bids: Iterable[int | None] = range(cfg.num_hidden_layers) if self.per_block else (None,)
        for bid in bids:
            yield bid, self.hf.format(bid=bid), gguf.TENSOR_NAMES[self.tensor].format(bid=bid) + self.suffix


@dataclass(frozen=True)
class MetaRow:
    """One row of the metadata table: a gguf.Keys template <-> a config attribute."""

    key: str  # e.g. gguf.Keys.LLM.CONTEXT_LENGTH ("{arch}.context_length")
    attr: str  # config attribute, e.g. "max_position_embeddings"
    vtype: gguf.GGUFValueType


def u32(key: str, attr: str) -> MetaRow:
    return MetaRow(key, attr, gguf.GGUFValueType.UINT32)


def f32(key: str, attr: str) -> MetaRow:
    return MetaRow(key, attr, gguf.GGUFValueType.FLOAT32)


def boolean(key: str, attr: str) -> MetaRow:
    return MetaRow(key, attr, gguf.GGUFValueType.BOOL)


def _f32(v: Any) -> float:
    return float(str(np.float32(v)))  # shortest decimal that round-trips float32: 1e-05, not 9.99e-06


_CASTS: dict[gguf.GGUFValueType, Callable[[Any], Any]] = {
    gguf.GGUFValueType.UINT32: int,
    gguf.GGUFValueType.FLOAT32: _f32,
    gguf.GGUFValueType.BOOL: bool,
}


def _nothing(*_args: Any) -> Any:
    return ()


def _no_files(*_args: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class PlannedTensor:
    """A tensor of the output file: where it comes from and its GGUF shape (numpy order)."""

    gguf_name: str
    shape: Shape
    hf_name: str | None = None  # None for generated tensors (e.g. rope_freqs)
    rule: TensorRule | None = None
    data: np.ndarray | None = None  # generated tensors carry their (small) data


@dataclass(frozen=True)
class ArchSpec:
    model_type: str  # HF config.json "model_type"
    arch: gguf.MODEL_ARCH
    config: type[ArchConfig]
    hf_architecture: str  # config.json "architectures"[0] for unpack
    tensors: tuple[TensorRule, ...]
    metadata: tuple[MetaRow, ...]
    # Hooks for what a table cannot say (keep them short):
    extra_metadata: Callable[[gguf.GGUFWriter, Any], None] = _nothing  # (writer, cfg)
    extra_tensors: Callable[[Any], Iterable[tuple[str, np.ndarray]]] = _nothing  # cfg -> (gguf name, f32 array)
    extra_config: Callable[[dict[str, Any], dict[str, Any]], None] = _nothing  # (gguf kv, config) for unpack
    # Inverse of extra_tensors for unpack: (generated tensors by GGUF name, config) -> the names it
    # turned back into config.json fields (e.g. Phi-3's longrope factors); others are dropped with a warning.
    tensors_to_config: Callable[[dict[str, np.ndarray], dict[str, Any]], Iterable[str]] = _nothing
    ignored: tuple[str, ...] = field(default=(".rotary_emb.inv_freq",))  # HF name suffixes dropped
    # Embedding rows past the tokenizer's vocabulary are dropped (Gemma 3): the converter loads the
    # vocabulary unpadded and rebuilds the config with `n_vocab` = its size before planning.
    trim_vocab: bool = False
    # Settings kept in files beside config.json (sentence-transformers' pooling): checkpoint folder ->
    # config fields, and the inverse for unpack: config (fields it consumes are popped) -> {relative
    # path: JSON value} written beside config.json.
    read_sidecar: Callable[[Path], dict[str, Any]] = _no_files
    write_sidecar: Callable[[dict[str, Any]], dict[str, Any]] = _no_files

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]

    def load_config(self, d: dict[str, Any]) -> ArchConfig:
        return self.config.from_dict(d)

    # -- forward: HF -> GGUF ------------------------------------------------------------------
    def plan(self, cfg: Any, hf_shapes: dict[str, Shape]) -> list[PlannedTensor]:
        """Every output tensor in file order; raises ModelFormatError on missing/extra/misshaped tensors."""
        out = [PlannedTensor(name, tuple(a.shape), data=a) for name, a in self.extra_tensors(cfg)]
        used: set[str] = set()
        for rule in self.tensors:
            for _bid, hf_name, gguf_name in rule.names(cfg):
                if hf_name not in hf_shapes:
                    if rule.required:
                        raise ModelFormatError(f"checkpoint lacks tensor {hf_name!r} that {self.model_type} needs")
                    continue
                used.add(hf_name)
                _check_shape(hf_name, hf_shapes[hf_name], tuple(rule.shape(cfg)))
                shape = rule.transform.out_shape(hf_shapes[hf_name], cfg) if rule.transform else hf_shapes[hf_name]
                out.append(PlannedTensor(gguf_name, tuple(shape), hf_name, rule))
        extra = sorted(n for n in hf_shapes if n not in used and not n.endswith(self.ignored))
        if extra:
            raise ModelFormatError(
                f"checkpoint has tensors the {self.model_type} converter does not know: "
                f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}"
            )
        return out

    def write_metadata(self, writer: gguf.GGUFWriter, cfg: Any) -> None:
        for row in self.metadata:
            value = getattr(cfg, row.attr)
            if value is not None:
                writer.add_key_value(row.key.format(arch=self.arch_name), _CASTS[row.vtype](value), row.vtype)
        self.extra_metadata(writer, cfg)

    # -- inverse: GGUF -> HF ------------------------------------------------------------------
    def hf_names(self, cfg: Any) -> dict[str, tuple[str, TensorRule]]:
        """gguf name -> (HF name, rule) for every tensor the table knows."""
        return {g: (h, rule) for rule in self.tensors for _bid, h, g in rule.names(cfg)}

    def config_from_gguf(self, kv: dict[str, Any]) -> dict[str, Any]:
        """config.json fields rebuilt from GGUF metadata (kv: key -> python value)."""
        out: dict[str, Any] = {"architectures": [self.hf_architecture], "model_type": self.model_type}
        for row in self.metadata:
            key = row.key.format(arch=self.arch_name)
            if key in kv:
                out[row.attr] = _CASTS[row.vtype](kv[key])
        self.extra_config(kv, out)
        return out


def _check_shape(name: str, got: Shape, want: Shape) -> None:
    if tuple(got) != tuple(want):
        raise ModelFormatError(
            f"tensor {name!r} has shape {list(got)} but config.json implies {list(want)}: "
            "the checkpoint and its config.json disagree"
        )


# -- shared transforms -------------------------------------------------------------------------


def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half q/k rows -> llama.cpp's interleaved rotary pairs (per head).

    w: (n_head * head_dim, n_embd) or (n_head * head_dim,) for a bias.
    """
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of `rope_permute`."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_rows(heads_attr: str) -> Transform:
    """q/k permutation with the head count taken from config attribute `heads_attr`."""
    return Transform(
        forward=lambda w, cfg: rope_permute(w, getattr(cfg, heads_attr)),
        inverse=lambda w, cfg: rope_unpermute(w, getattr(cfg, heads_attr)),
    )


PLUS_ONE = Transform(forward=lambda w, cfg: w + 1.0, inverse=lambda w, cfg: w - 1.0)
"""Gemma's RMSNorm multiplies by (1 + weight); llama.cpp by weight."""
