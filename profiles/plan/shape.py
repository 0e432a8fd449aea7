"""The shape of a model as the planner needs it, from an HF config.json or a GGUF header (no weights).

Tensors are edge.formats.gguf.TensorInfo rows with GGUF names (gguf.TENSOR_NAMES) and ggml dimension
order: shape[0] is the row length (the input dimension of a matmul), as llama.cpp sees them. An HF
checkpoint's tensors are listed as the converter would write them (F16 for F16/BF16 weights).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import ModelFormatError, UnsupportedArchitectureError
from edge.formats.gguf import ArrayRef, GGUFFile, TensorInfo, open_gguf
from edge.lightimport import gguf_constants

gguf = gguf_constants()  # the enums and tables only: no reader, writer or numpy (edge.lightimport)
T = gguf.GGMLQuantizationType
MT = gguf.MODEL_TENSOR


@dataclass(frozen=True)
class ModelShape:
    arch: str  # gguf.MODEL_ARCH_NAMES value, e.g. "llama", "gemma3"
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    tied_embeddings: bool
    n_swa: int = 0  # sliding window (tokens); 0: every layer attends to the whole context
    swa_layers: tuple[bool, ...] = ()  # per layer: uses the sliding window
    tensors: tuple[TensorInfo, ...] = field(default=(), repr=False)
    header_bytes: int = 0  # metadata + tensor infos in front of the data (GGUF: exact; HF: estimate)
    source: str = ""

    @property
    def n_gqa(self) -> int:
        return self.n_head // max(1, self.n_head_kv)

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)


# --- from an HF config.json -------------------------------------------------------------------

# model_type -> (gguf arch, fused qkv, fused gate+up, per-layer extra norms, default SWA pattern)
_HF_ARCHS = {
    "llama": ("llama", False, False, (), 0),
    "mistral": ("llama", False, False, (), 0),
    "qwen2": ("qwen2", False, False, (), 0),
    "phi3": ("phi3", True, True, (), 0),  # llama.cpp disables Phi-3's SWA (src/models/phi3.cpp)
    "gemma": ("gemma", False, False, (), 0),
    "gemma2": ("gemma2", False, False, (MT.ATTN_POST_NORM, MT.FFN_POST_NORM), 2),
    "gemma3_text": ("gemma3", False, False, (MT.ATTN_POST_NORM, MT.FFN_POST_NORM, MT.ATTN_Q_NORM, MT.ATTN_K_NORM), 6),
}
_HF_ARCHS["gemma3"] = _HF_ARCHS["gemma3_text"]
HEADER_BYTES_PER_TOKEN = 24  # vocabulary in the header: string + length (8) + score (4) + type (4), rough
HEADER_FIXED = 64 * 1024  # other metadata, chat template, tensor infos
MAX_LAYER_ARRAY = 1024  # per-layer arrays in a GGUF header (head counts, SWA pattern) are this short


@dataclass
class HFConfig:
    """The config.json fields the planner reads; unknown keys ignored; the properties resolve the optional ones."""

    model_type: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool | None = None
    sliding_window: int | None = None
    sliding_window_pattern: int | None = None
    layer_types: list | None = None
    rope_scaling: dict | None = None

    @classmethod
    def from_dict(cls, d: dict) -> HFConfig:
        d = (
            {**d.get("text_config", {}), **{k: v for k, v in d.items() if k != "text_config"}}
            if "text_config" in d
            else d
        )
        names = cls.__dataclass_fields__
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except TypeError as exc:
            raise ModelFormatError(f"config.json lacks a field the planner needs: {exc}") from exc

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def tied(self) -> bool:
        # transformers' default is True; Gemma ties, Llama-3.1-8B does not
        return True if self.tie_word_embeddings is None else self.tie_word_embeddings


def _hf_tensors(c: HFConfig, fused_qkv: bool, fused_up: bool, extra_norms) -> list[TensorInfo]:
    E, F, V, hd = c.hidden_size, c.intermediate_size, c.vocab_size, c.head_size
    q, kv = c.num_attention_heads * hd, c.kv_heads * hd
    n = gguf.TENSOR_NAMES

    def w(t, bid, *ne, type_=T.F16):
        return TensorInfo(n[t].format(bid=bid) + ".weight", tuple(ne), type_)

    out = [w(MT.TOKEN_EMBD, None, E, V)]
    if c.rope_scaling and c.rope_scaling.get("rope_type") == "llama3":
        out.append(TensorInfo(n[MT.ROPE_FREQS] + ".weight", (hd // 2,), T.F32))
    for b in range(c.num_hidden_layers):
        out.append(w(MT.ATTN_NORM, b, E, type_=T.F32))
        if fused_qkv:
            out.append(w(MT.ATTN_QKV, b, E, q + 2 * kv))
        else:
            out += [w(MT.ATTN_Q, b, E, q), w(MT.ATTN_K, b, E, kv), w(MT.ATTN_V, b, E, kv)]
        out.append(w(MT.ATTN_OUT, b, q, E))
        out.append(w(MT.FFN_NORM, b, E, type_=T.F32))
        if fused_up:
            out.append(w(MT.FFN_UP, b, E, 2 * F))
        else:
            out += [w(MT.FFN_GATE, b, E, F), w(MT.FFN_UP, b, E, F)]
        out.append(w(MT.FFN_DOWN, b, F, E))
        for norm in extra_norms:
            dim = hd if norm in (MT.ATTN_Q_NORM, MT.ATTN_K_NORM) else E
            out.append(w(norm, b, dim, type_=T.F32))
    out.append(w(MT.OUTPUT_NORM, None, E, type_=T.F32))
    if not c.tied:
        out.append(w(MT.OUTPUT, None, E, V))
    return out


def _swa_layers(n_layer: int, pattern: int) -> tuple[bool, ...]:
    """llama_hparams::set_swa_pattern: layer il slides unless il % pattern == pattern - 1."""
    return tuple(pattern > 0 and il % pattern < pattern - 1 for il in range(n_layer))


def shape_from_hf_config(config: dict, *, source: str = "config.json") -> ModelShape:
    model_type = config.get("model_type", "")
    if model_type not in _HF_ARCHS:
        raise UnsupportedArchitectureError(
            f"the planner does not know model_type {model_type!r}; supported: {', '.join(sorted(_HF_ARCHS))}"
        )
    arch, fused_qkv, fused_up, norms, pattern = _HF_ARCHS[model_type]
    c = HFConfig.from_dict(config)
    swa = 0
    if pattern and c.sliding_window:
        swa = c.sliding_window
        pattern = c.sliding_window_pattern or pattern
        layers = _swa_layers(c.num_hidden_layers, pattern)
        if c.layer_types:
            layers = tuple(t == "sliding_attention" for t in c.layer_types)
    else:
        layers = (False,) * c.num_hidden_layers
    return ModelShape(
        arch=arch,
        n_layer=c.num_hidden_layers,
        n_embd=c.hidden_size,
        n_head=c.num_attention_heads,
        n_head_kv=c.kv_heads,
        head_dim_k=c.head_size,
        head_dim_v=c.head_size,
        n_ff=c.intermediate_size,
        n_vocab=c.vocab_size,
        n_ctx_train=c.max_position_embeddings,
        tied_embeddings=c.tied,
        n_swa=swa,
        swa_layers=layers,
        tensors=tuple(_hf_tensors(c, fused_qkv, fused_up, norms)),
        header_bytes=HEADER_FIXED + HEADER_BYTES_PER_TOKEN * c.vocab_size,
        source=source,
    )


def read_hf_config(path: Path) -> ModelShape:
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelFormatError(f"{file} not found: give a GGUF file or a folder with config.json") from exc
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{file} is not valid JSON: {exc}") from exc
    return shape_from_hf_config(data, source=str(file))


# --- from a GGUF header -----------------------------------------------------------------------


def _gguf_fields(path: Path):
    """(metadata dict, tensor infos, data offset) through edge.formats.gguf's bounded reader.

    Short arrays of numbers come back decoded (per-layer values), the vocabulary as its token count,
    other arrays as ArrayRef."""
    with open_gguf(path) as f:
        kv = {k: _short(f, k, v) for k, v in f.meta.kv.items()}
        return kv, f.tensors, f.meta.data_offset


def _short(f: GGUFFile, key: str, v):
    if not isinstance(v, ArrayRef):
        return v
    if key == gguf.Keys.Tokenizer.LIST:
        return v.count
    return f.numbers(v) if v.count <= MAX_LAYER_ARRAY and v.item_type != gguf.GGUFValueType.STRING else v


def shape_from_gguf(path: Path) -> ModelShape:
    meta, tensors, data_offset = _gguf_fields(Path(path))
    arch = meta.get(gguf.Keys.General.ARCHITECTURE)
    if not arch:
        raise ModelFormatError(f"{path}: no general.architecture in the GGUF header")

    def key(template: str, default=None):
        value = meta.get(template.format(arch=arch), default)
        if value is None:
            raise ModelFormatError(f"{path}: missing {template.format(arch=arch)} in the GGUF header")
        return value

    def scalar(value):  # per-layer arrays (e.g. head_count_kv) -> the first layer's value
        return int(value[0]) if isinstance(value, list) else int(value)

    n_layer, n_embd = int(key(gguf.Keys.LLM.BLOCK_COUNT)), int(key(gguf.Keys.LLM.EMBEDDING_LENGTH))
    n_head = scalar(key(gguf.Keys.Attention.HEAD_COUNT))
    n_head_kv = scalar(key(gguf.Keys.Attention.HEAD_COUNT_KV, n_head))
    hd_k = int(key(gguf.Keys.Attention.KEY_LENGTH, n_embd // n_head))
    names = {t.name for t in tensors}
    embd = next((t for t in tensors if t.name == gguf.TENSOR_NAMES[MT.TOKEN_EMBD] + ".weight"), None)
    n_vocab = meta.get(gguf.Keys.Tokenizer.LIST) or (embd.shape[1] if embd else 0)
    n_swa = int(meta.get(gguf.Keys.Attention.SLIDING_WINDOW.format(arch=arch), 0) or 0)
    default_pattern = {"gemma2": 2, "gemma3": 6}.get(arch, 0)
    pattern = meta.get(gguf.Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=arch), default_pattern)
    if isinstance(pattern, list):
        layers = tuple(bool(x) for x in pattern)
    else:
        layers = _swa_layers(n_layer, int(pattern)) if n_swa and arch in ("gemma2", "gemma3") else (False,) * n_layer
    return ModelShape(
        arch=arch,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=hd_k,
        head_dim_v=int(key(gguf.Keys.Attention.VALUE_LENGTH, hd_k)),
        n_ff=scalar(key(gguf.Keys.LLM.FEED_FORWARD_LENGTH, 0)),
        n_vocab=int(n_vocab),
        n_ctx_train=int(key(gguf.Keys.LLM.CONTEXT_LENGTH, 4096)),
        tied_embeddings=gguf.TENSOR_NAMES[MT.OUTPUT] + ".weight" not in names,
        n_swa=n_swa if any(layers) else 0,
        swa_layers=layers,
        tensors=tuple(tensors),
        header_bytes=data_offset,
        source=str(path),
    )


def _magic(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(4)


def shape_to_json(shape: ModelShape) -> dict:
    d = {f: getattr(shape, f) for f in shape.__dataclass_fields__ if f != "tensors"}
    d["tensors"] = [[t.name, list(t.shape), int(t.ggml_type), t.offset] for t in shape.tensors]
    return d


def shape_from_json(d: dict) -> ModelShape:
    tensors = tuple(TensorInfo(name, tuple(ne), T(kind), *offset) for name, ne, kind, *offset in d["tensors"])
    return ModelShape(**{**d, "swa_layers": tuple(d["swa_layers"]), "tensors": tensors})


def read_model_shape(src: Path) -> ModelShape:
    """A .gguf file, an HF folder with config.json, or a config.json file.

    A GGUF's shape is remembered per unchanged file (edge.formats.filecache): serve starts skip the header walk."""
    from edge.formats.filecache import remember

    src = Path(src)
    if src.suffix == ".gguf" or (src.is_file() and _magic(src) == b"GGUF"):
        return shape_from_json(remember(src, "shape", lambda: shape_to_json(shape_from_gguf(src))))
    return read_hf_config(src)
