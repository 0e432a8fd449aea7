"""`edge-quantize convert SRC --to onnx:int4,...`: HF checkpoint (or GGUF, through unpack) -> ONNX folders.

For each requested type: validate the checkpoint against the architecture's tensor table (the GGUF
converter's, quantize/archs), build the decoder graph block by block from memory-mapped weights
(int4 weights are packed as they are read) and written to disk as the graph takes them (external
data above EXTERNAL_DATA_BYTES; quantize/onnx/weights.py), copy tokenizer/chat template/generation config, write the
manifest, and move the finished folder into place (a crash leaves only a .edge-tmp- folder).
Output: OUTDIR/<name>-onnx-<type>/.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import ModelFormatError, NotFoundError, OutputExistsError
from edge.formats.onnx import EXTERNAL_DATA_BYTES, MODEL_FILE, copy_companions, write_manifest

from ..archs import get_arch
from ..checkpoint import Checkpoint
from ..progress import Bars, warn
from . import get_spec
from .decoder import Loader, build
from .graph import Graph, WeightFormat
from .quant import OnnxType, parse_onnx_type
from .weights import WeightSink

TMP_PREFIX = ".edge-tmp-"


@dataclass(frozen=True)
class OnnxResult:
    type: str  # "onnx:int4_bs32"
    path: Path  # the model folder
    size_bytes: int  # model.onnx + external data
    bits_per_weight: float
    seconds: float


def export_onnx(
    src: Path,
    types: list[str] | str,
    out_dir: Path,
    *,
    force: bool = False,
    quiet: bool = False,
    name: str | None = None,
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
) -> list[OnnxResult]:
    src, out_dir = Path(src), Path(out_dir)
    otypes = [parse_onnx_type(t) for t in (types.split(",") if isinstance(types, str) else types)]
    if not src.exists():
        raise NotFoundError(f"{src} does not exist: give a Hugging Face checkpoint folder or a .gguf file")
    name = name or (src.resolve().name if src.is_dir() else src.stem)
    targets = {t.name: out_dir / f"{name}-onnx-{t.name}" for t in otypes}
    for path in targets.values():
        if path.exists() and not force:
            raise OutputExistsError(f"{path} already exists; use --force to overwrite it")
    out_dir.mkdir(parents=True, exist_ok=True)
    with Bars(quiet) as bars:
        if src.is_file():
            return _from_gguf(src, otypes, targets, out_dir, name, bars, external_data_bytes)
        return [_export_one(src, t, targets[t.name], bars, external_data_bytes) for t in otypes]


def _from_gguf(src, otypes, targets, out_dir, name, bars, external_data_bytes) -> list[OnnxResult]:
    from ..unpack import unpack

    if src.suffix.lower() != ".gguf":
        raise ModelFormatError(f"{src} is a file but not a .gguf; give a GGUF file or a checkpoint folder")
    warn(
        f"{src.name} is a GGUF file: it is unpacked (dequantized) first; quantizing again compounds the error. "
        "For best quality export from the original Hugging Face checkpoint."
    )
    tmp = out_dir / f"{TMP_PREFIX}unpack-{name}"
    try:
        unpack(src, tmp, force=True, quiet=True)
        return [_export_one(tmp, t, targets[t.name], bars, external_data_bytes) for t in otypes]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_config(src: Path) -> dict:
    path = src / "config.json"
    if not path.is_file():
        raise NotFoundError(f"{src} has no config.json: is it a Hugging Face checkpoint folder?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path} is not a JSON object")
    return data


def _tokenizer_size(src: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(src / "tokenizer.json")).get_vocab_size(with_added_tokens=True)


def _export_one(src: Path, otype: OnnxType, target: Path, bars: Bars, external_data_bytes: int) -> OnnxResult:
    start = time.perf_counter()
    config = _read_config(src)
    model_type = config.get("model_type")
    dspec = get_spec(model_type)  # unsupported architectures stop here
    aspec = get_arch(model_type)
    cfg = aspec.load_config(config)
    ckpt = Checkpoint.open(src)
    aspec.plan(cfg, ckpt.shapes())  # every tensor known, present and of the right shape
    vocab = min(_tokenizer_size(src), cfg.vocab_size) if aspec.trim_vocab else cfg.vocab_size
    lay = dspec.layout(cfg, vocab)
    tmp = target.parent / f"{TMP_PREFIX}{target.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        task = bars.add(f"export -> {otype.label}", total=lay.n_layers + 2)
        wf = otype.weights
        n_params = sum(int(np.prod(ckpt.refs[n].shape)) for n in ckpt.refs)
        big = n_params * _bytes_per_weight(wf) > external_data_bytes
        sink = WeightSink(tmp / MODEL_FILE, external=big)  # weights go to disk as the graph takes them
        try:
            g = Graph(f"{model_type}-decoder", wf, sink)
            build(dspec, lay, Loader(ckpt, set()), g, on_block=lambda i: bars.advance(task))
            sink.finish(g.model())
        finally:
            sink.close()
        bars.advance(task)
        copy_companions(src, tmp)
        write_manifest(tmp, _model_section(config, cfg, lay, n_params, src), otype.label)
        bars.advance(task)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
    }
