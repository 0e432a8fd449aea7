"""`edge-quantize convert`: HF checkpoint folder or GGUF file -> one GGUF file per requested type.

HF source: checkpoint -> ONE high-precision intermediate GGUF (written by us, tensor by tensor) ->
every other requested type through llama.cpp's quantizer (quantizer.py). The intermediate is the
most precise requested float type, else the source's float type; it is deleted at the end unless it
was requested or `keep_intermediate`. GGUF source: requantized directly, with a warning.

Everything is validated (types, architecture, config, tensor names and shapes, vocabulary, existing
outputs) before the first byte is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf
import numpy as np

from edge.errors import ModelFormatError, NotFoundError
from edge.formats.validate import validate_gguf
from edge.fsio import refuse_existing, temp_name

from .archs import get_arch
from .archs.base import PlannedTensor
from .checkpoint import Checkpoint
from .gguf_out import OutTensor, to_storage, write_gguf
from .imatrix import Imatrix, compute_imatrix
from .outputs import OutputPlan, gguf_path, plan, read_config
from .progress import Bars, Fallback, llama_log_to, warn
from .quantizer import QuantType, intermediate_type, quantize_file

if TYPE_CHECKING:
    from .onnx.calib import CalibOptions

Q = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class ConvertResult:
    type: str
    path: Path
    size_bytes: int
    bits_per_weight: float
    seconds: float
    imatrix: bool = False  # quantized with an importance matrix
    fallbacks: tuple[Fallback, ...] = ()  # tensors llama.cpp stored in another type (rows vs block size)
    exporter: str = ""  # ONNX folders: "edge" (our graph builder) or "optimum"


# Called once every output exists, before a temporary intermediate is removed:
# (the file the types were quantized from, the results, the importance matrix used or None, the bars).
AfterHook = Callable[[Path, list[ConvertResult], "Imatrix | None", Bars], None]


@dataclass(frozen=True)
class ImatrixOptions:
    text: Path  # --imatrix-text
    ctx: int = 512


def convert(
    src: Path,
    types: list[str] | str,
    out_dir: Path,
    *,
    force: bool = False,
    quiet: bool = False,
    keep_intermediate: bool = False,
    name: str | None = None,
    imatrix: ImatrixOptions | None = None,
    after: AfterHook | None = None,
    checkpoint: Checkpoint | None = None,
    calib: CalibOptions | None = None,
) -> list[ConvertResult]:
    """`checkpoint`: read the HF folder's weights through this instead (a LoRA merged on the fly).
    `calib`: quantize.onnx.calib.CalibOptions, the text calibrated ONNX types measure activations on."""
    src, out_dir = Path(src), Path(out_dir)
    p = plan(src, types, out_dir, name=name, imatrix=imatrix is not None, force=force)
    if imatrix is not None and p.gguf_types and not Path(imatrix.text).is_file():
        raise NotFoundError(f"--imatrix-text {imatrix.text} does not exist: give a UTF-8 text file")
    done = _export_onnx(src, p, force, quiet, calib) if p.onnx_types else []
    if not p.gguf_types:
        if after is not None and len(done) > 1 and any(r.type == "onnx:fp32" for r in done):
            with Bars(quiet) as bars:  # an ONNX-only ladder: the fp32 folder is the reference
                after(src, done, None, bars)
        return done
    if after is not None and done:  # the GGUF types' report gets the ONNX folders too: one table, one reference
        after = _adding(done, after)
    outputs = p.gguf_paths()
    with Bars(quiet) as bars:
        extra = _Extra(imatrix, after)
        if src.is_file():
            return done + _requantize(src, p.gguf_types, outputs, bars, force, extra)
        return done + _from_hf(
            src, p.gguf_types, outputs, out_dir, p.name, bars, force, keep_intermediate, extra, checkpoint
        )


def _export_onnx(src: Path, p: OutputPlan, force: bool, quiet: bool, calib: CalibOptions | None) -> list[ConvertResult]:
    from .onnx.export import export_onnx

    labels = [t.label for t in p.onnx_types]
    results = export_onnx(src, labels, p.out_dir, force=force, quiet=quiet, name=p.name, calib=calib)
    return [
        ConvertResult(r.type, r.path, r.size_bytes, r.bits_per_weight, r.seconds, exporter=r.exporter) for r in results
    ]


def _adding(rows: list[ConvertResult], after: AfterHook) -> AfterHook:
    def hook(quantized_from: Path, results: list[ConvertResult], matrix: Imatrix | None, bars: Bars) -> None:
        after(quantized_from, results + rows, matrix, bars)

    return hook


@dataclass
class _Extra:
    """Optional steps of a conversion: the importance matrix and the after-hook."""

    options: ImatrixOptions | None
    after: AfterHook | None
    matrix: Imatrix | None = None

    def compute(self, reference: Path, bars: Bars) -> None:
        if self.options is None:
            return
        from .eval.text import EvalText

        text = EvalText.from_file(Path(self.options.text), "--imatrix-text")
        task = bars.add("importance matrix", total=None)
        with llama_log_to(bars, task):
            self.matrix = compute_imatrix(
                reference,
                text.read(),
                ctx=self.options.ctx,
                origin=str(text.path),
                progress=lambda done, total: bars.update(task, completed=done, total=total),
            )

    def finish(self, quantized_from: Path, results: list[ConvertResult], bars: Bars) -> None:
        if self.after is not None:
            self.after(quantized_from, results, self.matrix, bars)


# -- HF checkpoint -> GGUF ---------------------------------------------------------------------


def _from_hf(
    src: Path,
    qtypes: list[QuantType],
    outputs: dict[str, Path],
    out_dir: Path,
    name: str,
    bars: Bars,
    force: bool,
    keep_intermediate: bool,
    extra: _Extra,
    checkpoint: Checkpoint | None = None,
) -> list[ConvertResult]:
    from . import vocab as vocab_mod  # owned by the vocab stream; imported only for HF sources

    config = read_config(src)
    spec = get_arch(config.get("model_type"))
    fields = {**config, **spec.read_sidecar(src)}
    cfg = spec.load_config(fields)
    ckpt = checkpoint or Checkpoint.open(src)
    vocab = vocab_mod.load_vocab(src, vocab_size=None if spec.trim_vocab else cfg.vocab_size)
    if spec.trim_vocab:  # Gemma 3: drop embedding rows past the tokenizer's vocabulary
        cfg = spec.load_config({**fields, "n_vocab": len(vocab.tokens)})  # checked against vocab_size
    plan = spec.plan(cfg, ckpt.shapes())
    inter = intermediate_type(qtypes, ckpt.float_dtype())
    inter_path = outputs.get(inter.name)
    if inter_path is None and keep_intermediate:
        inter_path = gguf_path(out_dir, name, inter)
        refuse_existing(inter_path, force)
    temp_inter = inter_path is None
    inter_path = inter_path or temp_name(gguf_path(out_dir, name, inter))

    def add_metadata(writer: gguf.GGUFWriter) -> None:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        spec.write_metadata(writer, cfg)
        writer.add_file_type(int(inter.ftype))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        vocab_mod.add_vocab_to_gguf(writer, vocab)

    params = sum(int(np.prod(t.shape, dtype=np.int64)) for t in plan)
    results: list[ConvertResult] = []
    try:
        start = time.perf_counter()
        task = bars.add(f"convert -> {inter.name}", total=len(plan))
        tensors = [_out_tensor(t, inter, cfg, ckpt) for t in plan]
        write_gguf(
            inter_path,
            spec.arch_name,
            add_metadata,
            tensors,
            force=force or temp_inter,
            on_tensor=lambda t: bars.advance(task),
        )
        if not temp_inter:
            results.append(_result(inter.name, inter_path, params, time.perf_counter() - start))
        extra.compute(inter_path, bars)
        todo = [q for q in qtypes if q is not inter]
        for qtype in _each_type(todo, bars):
            results.append(_quantize(inter_path, outputs[qtype.name], qtype, bars, force, False, params, extra.matrix))
        extra.finish(inter_path, _ordered(results, qtypes), bars)
    finally:
        if temp_inter:
            inter_path.unlink(missing_ok=True)
    return _ordered(results, qtypes)


def _ordered(results: list[ConvertResult], qtypes: list[QuantType]) -> list[ConvertResult]:
    order = [t.name for t in qtypes]  # a kept, unrequested intermediate comes first
    return sorted(results, key=lambda r: order.index(r.type) if r.type in order else -1)


# Embeddings llama.cpp's converter keeps in F32 whatever the type (BERT's positions and token types)
ALWAYS_F32 = tuple(gguf.TENSOR_NAMES[t] + "." for t in (gguf.MODEL_TENSOR.POS_EMBD, gguf.MODEL_TENSOR.TOKEN_TYPES))


def storage_type(gguf_name: str, shape: tuple[int, ...], wanted: Q) -> Q:
    """llama.cpp keeps 1-D tensors, norms, non-weights (biases, rope_freqs) and ALWAYS_F32 in F32."""
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return Q.F32
    if gguf_name.startswith(ALWAYS_F32):
        return Q.F32
    return wanted


def _out_tensor(t: PlannedTensor, inter: QuantType, cfg: Any, ckpt: Checkpoint) -> OutTensor:
    assert inter.float_type is not None
    qtype = storage_type(t.gguf_name, t.shape, inter.float_type)

    def load() -> np.ndarray:
        if t.data is not None:
            return to_storage(t.data, qtype)
        if t.hf_name is None:
            raise ModelFormatError(f"{t.gguf_name} has neither data nor a checkpoint tensor to come from")
        data = ckpt.load(t.hf_name)  # (HF shape) float32
        if t.rule is not None and t.rule.transform is not None:
            data = t.rule.transform.forward(data, cfg)  # (GGUF shape)
        return to_storage(data, qtype)

    return OutTensor(t.gguf_name, t.shape, qtype, load)


# -- quantization ------------------------------------------------------------------------------


def _requantize(
    src: Path, qtypes: list[QuantType], outputs: dict[str, Path], bars: Bars, force: bool, extra: _Extra
) -> list[ConvertResult]:
    if src.suffix.lower() != ".gguf":
        raise ModelFormatError(f"{src} is a file but not a .gguf; give a GGUF file or a checkpoint folder")
    if any(p.resolve() == src.resolve() for p in outputs.values()):
        raise ModelFormatError(f"output would overwrite the input {src}; choose another -o folder or --name")
    warn(
        f"{src.name} is already a GGUF file: requantizing compounds quantization error. "
        "For best quality convert from the original Hugging Face checkpoint."
    )
    summary = validate_gguf(src)  # a crafted file is refused before llama.cpp's quantizer parses it
    for w in summary.warnings:
        warn(f"{src.name}: {w}")
    params = summary.parameter_count
    extra.compute(src, bars)
    results = [
        _quantize(src, outputs[t.name], t, bars, force, True, params, extra.matrix) for t in _each_type(qtypes, bars)
    ]
    extra.finish(src, results, bars)
    return results


def _each_type(qtypes: list[QuantType], bars: Bars):
    """The types to quantize, with an overall bar (types done, time remaining) when there are several."""
    task = bars.add(f"{len(qtypes)} types", total=len(qtypes)) if len(qtypes) > 1 else None
    for qtype in qtypes:
        yield qtype
        bars.advance(task)


def _quantize(
    src: Path,
    dst: Path,
    qtype: QuantType,
    bars: Bars,
    force: bool,
    requantize: bool,
    params: int,
    matrix: Imatrix | None = None,
) -> ConvertResult:
    start = time.perf_counter()
    task = bars.add(f"quantize -> {qtype.name}" + (" (imatrix)" if matrix and not qtype.is_float else ""), total=None)
    with llama_log_to(bars, task) as log:  # llama.cpp's per-tensor fallback warnings: counted, not printed
        importance = matrix.means() if matrix is not None and not qtype.is_float else None
        quantize_file(src, dst, qtype, importance=importance, force=force, allow_requantize=requantize)
    bars.finish(task)
    fallbacks = log.fallbacks()
    for fallback in fallbacks:
        bars.note(f"{qtype.name}: {fallback.summary()}")
    return _result(
        qtype.name, dst, params, time.perf_counter() - start, matrix is not None and not qtype.is_float, fallbacks
    )


def _result(
    type_name: str, path: Path, params: int, seconds: float, imatrix: bool = False, fallbacks: tuple[Fallback, ...] = ()
) -> ConvertResult:
    size = path.stat().st_size
    return ConvertResult(type_name, path, size, size * 8 / max(params, 1), seconds, imatrix, fallbacks)
