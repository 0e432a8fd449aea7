"""`edge-quantize convert SRC --to onnx:int4,...`: HF checkpoint (or GGUF, through unpack) -> ONNX folders.

Architectures our graph builder lacks (not in quantize.onnx.SUPPORTED) are exported by optimum
instead (quantize/onnx/optimum_export.py); the result and the manifest say which exporter made a folder.

For each requested type: validate the checkpoint against the architecture's tensor table (the GGUF
converter's, quantize/archs), build the decoder graph block by block from memory-mapped weights
(int4 weights are packed as they are read) and written to disk as the graph takes them (external
data above EXTERNAL_DATA_BYTES; quantize/onnx/weights.py), copy tokenizer/chat template/generation config, write the
manifest, then publish the folder with edge.fsio.atomic_folder (every file and the folder fsynced, then
renamed: a crash leaves only a .edge-tmp- folder, never a partial folder under the final name).
Output: OUTDIR/<name>-onnx-<type>/ (quantize.outputs names it).
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import BadRequestError, ModelFormatError
from edge.formats.onnx import EXTERNAL_DATA_BYTES, MODEL_FILE, copy_companions, write_manifest
from edge.fsio import atomic_folder, temp_name

from ..archs import get_arch
from ..checkpoint import Checkpoint
from ..outputs import ONNX_PREFIX, plan, read_config
from ..progress import Bars, warn
from . import SUPPORTED, get_spec
from .calib import CalibOptions, CalibText, check_calibration, collect
from .decoder import Loader, build
from .genai import write_genai_config
from .graph import Graph, WeightFormat
from .quant import OnnxType, parse_onnx_type
from .weights import WeightSink


@dataclass(frozen=True)
class OnnxResult:
    type: str  # "onnx:int4_bs32"
    path: Path  # the model folder
    size_bytes: int  # model.onnx + external data
    bits_per_weight: float
    seconds: float
    exporter: str = "edge"  # "edge" (our graph builder) | "optimum" (quantize/onnx/optimum_export.py)


def export_onnx(
    src: Path,
    types: list[str] | str,
    out_dir: Path,
    *,
    force: bool = False,
    quiet: bool = False,
    name: str | None = None,
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
    calib: CalibOptions | None = None,
) -> list[OnnxResult]:
    """`calib`: the text calibrated types (onnx:int4_awq) measure activations on; required by them."""
    src, out_dir = Path(src), Path(out_dir)
    names = [t for t in (types.split(",") if isinstance(types, str) else types) if t.strip()]
    names = [t if t.strip().lower().startswith(ONNX_PREFIX) else ONNX_PREFIX + t.strip() for t in names]
    p = plan(src, names, out_dir, name=name, force=force)
    text = check_calibration(p.onnx_types, calib)
    calibrated = [t.label for t in p.onnx_types if t.calibrated]
    if calibrated and src.is_dir() and (kind := read_config(src).get("model_type")) not in SUPPORTED:
        raise BadRequestError(
            f"{', '.join(calibrated)}: calibration runs on our graph builder's architectures "
            f"({', '.join(sorted(SUPPORTED))}); {kind} is exported by optimum: use onnx:int8 or onnx:int4"
        )
    targets = p.onnx_paths()
    out_dir.mkdir(parents=True, exist_ok=True)
    with Bars(quiet) as bars:
        if src.is_file():
            return _from_gguf(src, p.onnx_types, targets, out_dir, p.name, bars, external_data_bytes, force, text)
        with _calibration(src, p.onnx_types, text, out_dir, p.name, bars) as stats:
            return [_export_one(src, t, targets[t.name], bars, external_data_bytes, force, stats) for t in p.onnx_types]


def _from_gguf(src, otypes, targets, out_dir, name, bars, external_data_bytes, force, text) -> list[OnnxResult]:
    from ..unpack import unpack

    if src.suffix.lower() != ".gguf":
        raise ModelFormatError(f"{src} is a file but not a .gguf; give a GGUF file or a checkpoint folder")
    warn(
        f"{src.name} is a GGUF file: it is unpacked (dequantized) first; quantizing again compounds the error. "
        "For best quality export from the original Hugging Face checkpoint."
    )
    tmp = temp_name(out_dir / name, "unpack-")
    try:
        unpack(src, tmp, force=True, quiet=True)
        with _calibration(tmp, otypes, text, out_dir, name, bars) as stats:
            return [_export_one(tmp, t, targets[t.name], bars, external_data_bytes, force, stats) for t in otypes]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tokenizer_size(src: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(src / "tokenizer.json")).get_vocab_size(with_added_tokens=True)


@contextmanager
def _calibration(src: Path, otypes: list[OnnxType], text: CalibText | None, out_dir: Path, name: str, bars: Bars):
    """Activation statistics for the calibrated types (None without them), from a temporary int8
    export (quantize/onnx/calib.py) that lives, with the Hessians spilled beside it, until the
    types are written."""
    if text is None or not any(t.calibrated for t in otypes):
        yield None
        return
    todo = text.chunks(src)  # a text too short fails here, before any output
    tmp = temp_name(out_dir / name, "calib-")
    try:
        _export_one(src, parse_onnx_type("onnx:int8_acc1"), tmp, bars, EXTERNAL_DATA_BYTES, True)
        task = bars.add("calibration (activations)", total=len(todo))
        full = any(t.weights.method == "gptq" for t in otypes)
        yield collect(tmp, todo, full=full, progress=lambda done, total: bars.update(task, completed=done, total=total))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _export_one(
    src: Path,
    otype: OnnxType,
    target: Path,
    bars: Bars,
    external_data_bytes: int,
    force: bool,
    stats: dict[str, np.ndarray] | None = None,
) -> OnnxResult:
    start = time.perf_counter()
    config = read_config(src)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED:  # our graph builder lacks it: optimum's exporter
        from .optimum_export import EXPORTER, run

        size, bpw, seconds = run(src, config, otype, target, force, _eos_ids(src, config))
        return OnnxResult(otype.label, target, size, bpw, seconds, exporter=EXPORTER)
    dspec = get_spec(model_type)
    aspec = get_arch(model_type)
    cfg = aspec.load_config(config)
    ckpt = Checkpoint.open(src)
    aspec.plan(cfg, ckpt.shapes())  # every tensor known, present and of the right shape
    vocab = min(_tokenizer_size(src), cfg.vocab_size) if aspec.trim_vocab else cfg.vocab_size
    lay = dspec.layout(cfg, vocab)
    task = bars.add(f"export -> {otype.label}", total=lay.n_layers + 2)
    wf = otype.weights
    n_params = sum(int(np.prod(ckpt.refs[n].shape)) for n in ckpt.refs)
    big = n_params * _bytes_per_weight(wf) > external_data_bytes
    with atomic_folder(target, force=force) as tmp:
        sink = WeightSink(tmp / MODEL_FILE, external=big)  # weights go to disk as the graph takes them
        try:
            g = Graph(f"{model_type}-decoder", wf, sink, stats if otype.calibrated else None)
            build(dspec, lay, Loader(ckpt, set()), g, on_block=lambda i: bars.advance(task))
            sink.finish(g.model())
        finally:
            sink.close()
        bars.advance(task)
        copy_companions(src, tmp)
        model = _model_section(config, cfg, lay, n_params, src)
        write_genai_config(tmp, model)
        write_manifest(tmp, model, otype.label)
        bars.advance(task)
    size = sum(p.stat().st_size for p in target.glob("model.onnx*"))
    return OnnxResult(otype.label, target, size, size * 8 / max(n_params, 1), time.perf_counter() - start)


def _bytes_per_weight(wf: WeightFormat) -> float:
    """Bytes a weight takes in the export (fp32 scales of n-bit blocks included): decides external data up front."""
    if wf.kind == "nbits":
        return wf.bits / 8 + 4 / wf.block_size
    return {"fp16": 2.0, "int8": 1.0}.get(wf.kind, 4.0)


def _eos_ids(src: Path, config: dict) -> list[int]:
    ids: list[int] = []
    for source in (src / "generation_config.json", None):
        data = config if source is None else (json.loads(source.read_text()) if source.is_file() else {})
        eos = data.get("eos_token_id")
        for i in eos if isinstance(eos, list) else [eos]:
            if isinstance(i, int) and i not in ids:
                ids.append(i)
    return ids


def _model_section(config: dict, cfg, lay, n_params: int, src: Path) -> dict:
    return {
        "model_type": config.get("model_type"),
        "architecture": (config.get("architectures") or [None])[0],
        "n_layers": lay.n_layers,
        "n_heads": lay.n_heads,
        "n_kv_heads": lay.n_kv_heads,
        "head_dim": lay.head_dim,
        "hidden_size": lay.hidden,
        "vocab_size": lay.vocab,
        "max_positions": min(lay.ropes[0].positions, 131072),
        "context_length": cfg.max_position_embeddings,
        "parameter_count": n_params,
        "eos_token_ids": _eos_ids(src, config),
        "bos_token_id": config.get("bos_token_id"),
        "pad_token_id": config.get("pad_token_id"),
        "exporter": "edge",  # quantize/onnx's graph builder (KV shared in place)
        "kv_cache": "inplace",
    }
