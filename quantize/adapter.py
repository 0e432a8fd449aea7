"""`edge-quantize adapter PEFT_DIR --base BASE -o OUT.gguf`: a PEFT LoRA adapter -> a GGUF LoRA adapter.

PEFT stores, per adapted Linear `m` (weight W, numpy shape (out, in)), `m.lora_A.weight` (r, in) and
`m.lora_B.weight` (out, r); the layer computes W x + s * B A x with s = alpha / r (alpha / sqrt(r)
with `use_rslora`; per-module r and alpha from `rank_pattern` / `alpha_pattern`).

The GGUF adapter, as llama.cpp loads it (llama-adapter.cpp): `general.type` "adapter",
`adapter.type` "lora", `adapter.lora.alpha` (f32), and per adapted base tensor `<name>.lora_a`
(numpy (r, in), ggml ne [in, r]) and `<name>.lora_b` (numpy (out, r), ggml ne [r, out]); llama.cpp
scales by alpha / r, r read from each lora_a. Where PEFT's per-module scale differs from that
(rslora, patterns) the difference is folded into lora_b.

Names and layouts come from the base architecture's table (quantize/archs): a module's weight maps
to the GGUF tensor of the same rule, and the rule's row transform (Llama's q/k rotary permutation)
is applied to lora_b's rows, since B A is permuted like W. Phi-3's fused qkv_proj / gate_up_proj
are single Linears in HF and single tensors in GGUF: they map one to one.

Refused with the reason, before anything is written: a missing adapter_config.json or weights, a
non-LoRA or DoRA adapter, a rank or alpha that is not a number, a target module the architecture
does not have, tensors whose shapes disagree with the base (an adapter for another model), trained
embeddings or fully trained copies of layers (`modules_to_save`: a LoRA file cannot carry them), and
an adapted lm_head on a base whose output shares the embedding (llama.cpp would apply it to both).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from edge.errors import BadRequestError, ModelFormatError, NotFoundError
from edge.formats.validate import validate_gguf

from .archs import get_arch, get_arch_for_gguf
from .archs.base import ArchSpec, TensorRule
from .checkpoint import Checkpoint, read_header
from .gguf_out import OutTensor, to_storage, write_gguf
from .outputs import read_json_object, split_types

T = gguf.MODEL_TENSOR
Q = gguf.GGMLQuantizationType
PEFT_PREFIX = "base_model.model."
ROW_PERMUTED = (T.ATTN_Q, T.ATTN_K)  # the only transforms a LoRA product goes through (rows of B)
TYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16}
EMBEDDINGS = ("embed_tokens",)


@dataclass(frozen=True)
class LoraConfig:
    """adapter_config.json, the fields that change the weights."""

    r: int
    alpha: float
    target_modules: tuple[str, ...] | str  # names (matched as the last part of a module path) or one regex
    use_rslora: bool = False
    rank_pattern: dict[str, int] | None = None
    alpha_pattern: dict[str, float] | None = None

    @classmethod
    def read(cls, peft_dir: Path) -> LoraConfig:
        path = peft_dir / "adapter_config.json"
        if not path.is_file():
            raise NotFoundError(f"{peft_dir} has no adapter_config.json: give the folder PEFT's save_pretrained wrote")
        d = read_json_object(path)
        kind = d.get("peft_type", "LORA")
        if kind != "LORA":
            raise ModelFormatError(f"{path}: peft_type {kind!r} is not a LoRA; only LoRA adapters convert")
        for flag, why in (("use_dora", "DoRA"), ("lora_bias", "LoRA biases"), ("fan_in_fan_out", "fan_in_fan_out")):
            if d.get(flag):
                raise ModelFormatError(f"{path}: {flag} is set; {why} has no GGUF LoRA form llama.cpp applies")
        targets = d.get("target_modules")
        if isinstance(targets, list) and all(isinstance(t, str) for t in targets):
            targets = tuple(targets)
        elif not isinstance(targets, str):
            raise ModelFormatError(f"{path}: target_modules must be a list of module names or a regex, got {targets!r}")
        return cls(
            r=_number(d.get("r"), "r", path, integer=True),
            alpha=_number(d.get("lora_alpha", 8), "lora_alpha", path),
            target_modules=targets,
            use_rslora=bool(d.get("use_rslora", False)),
            rank_pattern={k: _number(v, f"rank_pattern[{k}]", path, integer=True) for k, v in _dict(d, "rank_pattern")},
            alpha_pattern={k: _number(v, f"alpha_pattern[{k}]", path) for k, v in _dict(d, "alpha_pattern")},
        )

    def scaling(self, module: str, rank: int) -> float:
        """PEFT's factor on B A for `module` (which has rank `rank`)."""
        alpha = _pattern(self.alpha_pattern, module, self.alpha)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank

    def rank(self, module: str) -> int:
        return int(_pattern(self.rank_pattern, module, self.r))


def _dict(d: dict, key: str):
    value = d.get(key) or {}
    return value.items() if isinstance(value, dict) else ()


def _number(value: Any, name: str, path: Path, *, integer: bool = False) -> Any:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (integer and (value != int(value) or value <= 0)):
        want = "a positive integer" if integer else "a number"
        raise BadRequestError(f"{path}: {name} is {value!r}, not {want}; fix adapter_config.json")
    return int(value) if integer else float(value)


def _pattern(patterns: dict | None, module: str, default: Any) -> Any:
    """PEFT's pattern lookup: the first key matching the end of the module path."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


# -- the base model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Base:
    """What the conversion needs of the base model: its architecture and its tensors' shapes."""

    spec: ArchSpec
    cfg: Any
    shapes: dict[str, tuple[int, ...]]  # HF weight name -> HF (numpy) shape, for tensors the base has

    @classmethod
    def read(cls, path: Path) -> Base:
        path = Path(path)
        if path.is_dir():
            return cls._from_hf(path)
        if path.is_file():
            return cls._from_gguf(path)
        raise NotFoundError(f"base model {path} does not exist: give its Hugging Face folder or GGUF file")

    @classmethod
    def _from_hf(cls, folder: Path) -> Base:
        from .outputs import read_config

        config = read_config(folder)
        spec = get_arch(config.get("model_type"))
        cfg = spec.load_config({**config, **spec.read_sidecar(folder)})
        if any(folder.glob("*.safetensors")):
            shapes = Checkpoint.open(folder).shapes()
        else:  # a config-only base: the shapes config.json implies
            shapes = {h: tuple(rule.shape(cfg)) for rule in spec.tensors for _b, h, _g in rule.names(cfg)}
            if getattr(cfg, "tie_word_embeddings", False):
                shapes.pop("lm_head.weight", None)
        return cls(spec, cfg, shapes)

    @classmethod
    def _from_gguf(cls, path: Path) -> Base:
        from .unpack import hf_config, read_gguf

        validate_gguf(path)
        kv, tensors, data = read_gguf(path)
        spec = get_arch_for_gguf(str(kv.get(gguf.Keys.General.ARCHITECTURE)))
        cfg = spec.load_config(hf_config(spec, kv, tensors, data))
        names = spec.hf_names(cfg)
        shapes = {names[g][0]: tuple(int(d) for d in reversed(t.shape)) for g, t in tensors.items() if g in names}
        return cls(spec, cfg, shapes)

    def rule_for(self, hf_weight: str) -> tuple[TensorRule, str] | None:
        for rule in self.spec.tensors:
            for _bid, hf, gguf_name in rule.names(self.cfg):
                if hf == hf_weight:
                    return rule, gguf_name
        return None

    def linear_leaves(self) -> set[str]:
        """The last path part of every 2-D weight of the architecture (q_proj, gate_up_proj, lm_head, ...)."""
        return {
            rule.hf.removesuffix(".weight").rsplit(".", 1)[-1]
            for rule in self.spec.tensors
            if rule.suffix == ".weight" and len(rule.shape(self.cfg)) == 2
        }


# -- planning ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraPair:
    module: str  # HF module path, e.g. "model.layers.0.self_attn.q_proj"
    gguf_name: str  # base tensor, e.g. "blk.0.attn_q.weight"
    rule: TensorRule
    a: str  # adapter tensor names
    b: str
    rank: int
    scale: float  # PEFT's factor on B A
    factor: float  # multiplies lora_b: PEFT's scale over llama.cpp's alpha / rank


def plan_adapter(peft_dir: Path, base: Base) -> tuple[LoraConfig, list[LoraPair], dict]:
    """Check the adapter against the base and return what to write; raises before anything is written."""
    peft_dir = Path(peft_dir)
    config = LoraConfig.read(peft_dir)
    _check_targets(config, base)
    weights = peft_dir / "adapter_model.safetensors"
    if not weights.is_file():
        extra = (
            " (adapter_model.bin is not read: re-save with safe_serialization=True)"
            if (peft_dir / "adapter_model.bin").is_file()
            else ""
        )
        raise NotFoundError(f"{peft_dir} has no adapter_model.safetensors{extra}")
    refs = read_header(weights)
    modules: dict[str, dict[str, str]] = {}
    for name in refs:
        if name.endswith(".base_layer.weight"):  # PEFT's copy of a frozen tied layer: the base has it
            continue
        module, part = _split(name)
        modules.setdefault(module, {})[part] = name
    pairs = [_pair(module, parts, refs, config, base) for module, parts in sorted(modules.items())]
    if not pairs:
        raise ModelFormatError(f"{weights} holds no LoRA tensors")
    return config, pairs, refs


def _split(name: str) -> tuple[str, str]:
    """PEFT tensor name -> (module path, "A" | "B"); other tensors are refused with the reason."""
    plain = name.removeprefix(PEFT_PREFIX)
    if ".lora_embedding_" in plain or any(p in plain.split(".") for p in EMBEDDINGS):
        raise ModelFormatError(
            f"the adapter trained the token embeddings ({name}); llama.cpp's LoRA form for them differs "
            "from PEFT's (and a tied output would take it too): retrain without embed_tokens in "
            "target_modules or modules_to_save, or merge the adapter into the model instead"
        )
    m = re.fullmatch(r"(.+)\.lora_([AB])(?:\.[A-Za-z0-9_-]+)?\.weight", plain)
    if m:
        return m[1], m[2]
    if "lora_magnitude_vector" in plain:
        raise ModelFormatError(f"{name} is a DoRA magnitude; DoRA adapters have no GGUF LoRA form")
    raise ModelFormatError(
        f"the adapter holds {name}, a fully trained layer (modules_to_save) rather than a LoRA pair; "
        "a GGUF LoRA adapter cannot carry it: retrain without modules_to_save, or merge the adapter instead"
    )


def _pair(module: str, parts: dict[str, str], refs: dict, config: LoraConfig, base: Base) -> LoraPair:
    if set(parts) != {"A", "B"}:
        missing = "lora_B" if "A" in parts else "lora_A"
        raise ModelFormatError(f"the adapter has no {missing} for {module}; the file is incomplete")
    hf_weight = module + ".weight"
    found = base.rule_for(hf_weight)
    if found is None or len(found[0].shape(base.cfg)) != 2:
        raise ModelFormatError(
            f"the adapter changes {module}, which is not a layer of {base.spec.model_type}: "
            "is it an adapter for another model?"
        )
    rule, gguf_name = found
    if hf_weight not in base.shapes:
        why = "ties its output to the embeddings" if module == "lm_head" else "lacks that tensor"
        raise ModelFormatError(
            f"the adapter changes {module} but the base model {why}; llama.cpp cannot apply it there"
        )
    if rule.transform is not None and rule.tensor not in ROW_PERMUTED:
        raise ModelFormatError(f"{module} is stored transformed in GGUF; a LoRA on it cannot be converted")
    a_shape, b_shape = refs[parts["A"]].shape, refs[parts["B"]].shape
    out_dim, in_dim = base.shapes[hf_weight]
    rank = a_shape[0] if len(a_shape) == 2 else -1
    if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[1] != in_dim or b_shape != (out_dim, rank):
        raise ModelFormatError(
            f"adapter tensors of {module} have shapes A {list(a_shape)}, B {list(b_shape)} but the base layer is "
            f"{list(base.shapes[hf_weight])} (out, in): the adapter was trained on another base model"
        )
    if rank != config.rank(module):
        raise ModelFormatError(
            f"{module} has rank {rank} but adapter_config.json says r = {config.rank(module)}; the files disagree"
        )
    llama_scale = config.alpha / rank if config.alpha else 1.0  # what llama.cpp will multiply by
    scale = config.scaling(module, rank)
    return LoraPair(module, gguf_name, rule, parts["A"], parts["B"], rank, scale, scale / llama_scale)


def _check_targets(config: LoraConfig, base: Base) -> None:
    known = base.linear_leaves()
    if isinstance(config.target_modules, str):
        if config.target_modules == "all-linear":
            return
        modules = {h.removesuffix(".weight") for h in base.shapes}
        if not any(re.fullmatch(config.target_modules, m) for m in modules):
            raise ModelFormatError(
                f"target_modules {config.target_modules!r} matches no layer of {base.spec.model_type}"
            )
        return
    unknown = [t for t in config.target_modules if t.rsplit(".", 1)[-1] not in known]
    if unknown:
        raise ModelFormatError(
            f"target module(s) {', '.join(unknown)} are not layers of {base.spec.model_type} "
            f"(its layers: {', '.join(sorted(known))}): is the adapter for another model?"
        )


# -- writing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterResult:
    path: Path
    tensors: int
    rank: int
    alpha: float
    seconds: float


def convert_adapter(
    peft_dir: Path, base_path: Path, out: Path, *, out_type: str = "f32", force: bool = False
) -> AdapterResult:
    """Write the GGUF LoRA adapter of `peft_dir` for the base model at `base_path` (folder or GGUF)."""
    start = time.perf_counter()
    if out_type not in TYPES:
        raise BadRequestError(f"--type {out_type!r} is not one of {', '.join(TYPES)}")
    base = Base.read(base_path)
    config, pairs, refs = plan_adapter(Path(peft_dir), base)
    qtype = TYPES[out_type]
    adapter = Checkpoint(refs)
    tensors: list[OutTensor] = []
    for p in pairs:
        r, (out_dim, in_dim) = p.rank, base.shapes[p.module + ".weight"]
        tensors.append(OutTensor(p.gguf_name + ".lora_a", (r, in_dim), qtype, _loader(adapter, p, "a", base, qtype)))
        tensors.append(OutTensor(p.gguf_name + ".lora_b", (out_dim, r), qtype, _loader(adapter, p, "b", base, qtype)))

    def add_metadata(writer: gguf.GGUFWriter) -> None:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, config.alpha)
        writer.add_name(Path(peft_dir).resolve().name)

    write_gguf(Path(out), base.spec.arch_name, add_metadata, tensors, force=force)
    return AdapterResult(Path(out), len(tensors), max(p.rank for p in pairs), config.alpha, time.perf_counter() - start)


def _loader(adapter: Checkpoint, p: LoraPair, which: str, base: Base, qtype: Q):
    def load() -> np.ndarray:
        if which == "a":
            return to_storage(adapter.load(p.a), qtype)  # (r, in)
        b = adapter.load(p.b)  # (out, r)
        if p.factor != 1.0:
            b = b * np.float32(p.factor)
        if p.rule.transform is not None:  # q/k rows permuted like the base weight's
            b = p.rule.transform.forward(b, base.cfg)
        return to_storage(b, qtype)

    return load


# -- merging ---------------------------------------------------------------------------------------


class MergedCheckpoint(Checkpoint):
    """The base checkpoint with the adapter merged into each adapted weight as it is read:
    W + s B A, computed in float64 and returned as float32 (so the converter's intermediate is F32)."""

    def __init__(self, base: Checkpoint, adapter: Checkpoint, pairs: list[LoraPair]):
        super().__init__(base.refs)
        self.adapter = adapter
        self.pairs = {p.module + ".weight": p for p in pairs}

    def float_dtype(self) -> str:
        return "F32"

    def load(self, name: str) -> np.ndarray:
        w = super().load(name)  # (out, in)
        p = self.pairs.get(name)
        if p is None:
            return w
        delta = self.adapter.load(p.b).astype(np.float64) @ self.adapter.load(p.a).astype(np.float64)  # (out, in)
        return (w.astype(np.float64) + p.scale * delta).astype(np.float32)


def merge_adapter(
    peft_dir: Path, base_dir: Path, types: list[str] | str, out_dir: Path, *, name: str | None = None, **kw: Any
):
    """Write the base model with the adapter merged, at each of `types` (any type `convert` takes):
    merged in high precision into an F32 intermediate, then quantized. `base_dir` is the HF folder."""
    from .convert import convert

    base_dir = Path(base_dir)
    _gguf_types, onnx = split_types(types)
    if onnx:  # the ONNX exporter reads the HF folder itself, not the merged checkpoint
        raise BadRequestError(
            f"--merge writes GGUF types only, not {', '.join(onnx)}: merge to a GGUF type, or merge with PEFT "
            "(merge_and_unload), save the Hugging Face folder and convert that to ONNX"
        )
    if not base_dir.is_dir() or not any(base_dir.glob("*.safetensors")):
        raise BadRequestError(
            f"--merge needs the base model's Hugging Face folder with its weights, not {base_dir}; "
            "a GGUF base can be turned into one with `edge-quantize unpack`"
        )
    base = Base.read(base_dir)
    _config, pairs, refs = plan_adapter(Path(peft_dir), base)
    merged = MergedCheckpoint(Checkpoint.open(base_dir), Checkpoint(refs), pairs)
    name = name or f"{base_dir.resolve().name}-{Path(peft_dir).resolve().name}".lower()
    return convert(base_dir, types, out_dir, name=name, checkpoint=merged, **kw)
