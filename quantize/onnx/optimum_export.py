"""ONNX export through Hugging Face optimum, for architectures our graph builder does not have.

`edge-quantize convert SRC --to onnx:…` builds the graph itself for the model types in
quantize.onnx.SUPPORTED (fused contrib ops, KV cache shared in place); any other checkpoint goes
through optimum's exporter (torch tracing of the transformers model): decoders (`*ForCausalLM`:
Qwen2, Mistral, ...) as `text-generation-with-past`, anything else (BERT-family encoders) as
`feature-extraction`. The exported fp32 graph's MatMuls with constant weights are then rewritten to
onnxruntime's weight-only MatMulNBits for onnx:int8 / onnx:int4 (packed by onnxruntime's C++
quantizer, as our own graphs are: quantize/onnx/graph.py).

The folder gets the same companions (tokenizer, chat template, configs), genai_config.json (for
decoders) and manifest as ours; the manifest's model section says `"exporter": "optimum"` and
`"kv_cache": "concat"` (a present cache one step longer than the past, run by
edge.engine.onnx.concat). Unlike our exporter, optimum loads the whole model in torch: the export
needs memory for the fp32 model and its graph.

torch, transformers and optimum are imported here only, inside the functions, and only when such a
checkpoint is converted (the `optimum` extra).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import DependencyMissingError, UnknownTypeError, UnsupportedArchitectureError
from edge.formats.onnx import DATA_FILE, EXTERNAL_DATA_BYTES, MODEL_FILE, copy_companions, write_manifest
from edge.fsio import atomic_folder

from .genai import write_genai_config
from .graph import Graph, WeightFormat
from .quant import OnnxType

EXPORTER = "optimum"
KINDS = ("fp32", "nbits")  # weight formats this path writes (onnx:fp32, onnx:int8, onnx:int4*)


def _main_export():
    try:
        import optimum.exporters.onnx as exporters  # optimum-onnx: imports torch and transformers
    except ImportError as exc:
        raise DependencyMissingError(
            f"exporting this architecture to ONNX needs optimum ({exc.name or exc} is missing): "
            "pip install 'edge-llm[optimum]'"
        ) from None
    return exporters.main_export


def task_for(config: dict) -> str:
    """optimum's task for the checkpoint (it must support the model type for that task)."""
    archs = config.get("architectures") or []
    task = "text-generation-with-past" if any(str(a).endswith("ForCausalLM") for a in archs) else "feature-extraction"
    import optimum.exporters.onnx.model_configs  # noqa: F401 - registers the ONNX configs with TasksManager
    from optimum.exporters.tasks import TasksManager

    model_type = str(config.get("model_type"))
    try:
        tasks = TasksManager.get_supported_tasks_for_model_type(model_type, "onnx", library_name="transformers")
    except KeyError:
        tasks = {}
    if task not in tasks:
        from . import SUPPORTED

        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} cannot be exported to ONNX: our graph builder has "
            f"{', '.join(SUPPORTED)}, and optimum's exporter has no {task} for it"
        )
    return task


def export_one(src: Path, config: dict, otype: OnnxType, target: Path, force: bool, eos_ids: list[int]):
    """Export `src` to `target` as `otype` through optimum; returns (size_bytes, n_params)."""
    wf = otype.weights
    if wf.kind not in KINDS:
        raise UnknownTypeError(
            f"{otype.label} is not available for model_type {config.get('model_type')!r} (exported by optimum): "
            "choose onnx:fp32, onnx:int8 or onnx:int4[_bs…][_asym][_acc…]"
        )
    main_export = _main_export()  # first: a missing optimum names its extra
    task = task_for(config)
    with atomic_folder(target, force=force) as tmp:
        raw = tmp / "optimum"
        main_export(str(src), output=str(raw), task=task, device="cpu", do_validation=False, no_post_process=False)
        n_params = _finish_graph(raw / MODEL_FILE, tmp / MODEL_FILE, wf)
        shutil.rmtree(raw)
        copy_companions(src, tmp)
        model = _model_section(tmp / MODEL_FILE, config, task, n_params, eos_ids)
        if model["task"] == "text-generation":
            write_genai_config(tmp, model, kv_cache="concat")
        write_manifest(tmp, model, otype.label)
    return sum(p.stat().st_size for p in target.glob("model.onnx*")), n_params


def _finish_graph(src: Path, dst: Path, wf: WeightFormat) -> int:
    """Load optimum's graph, rewrite its constant-weight MatMuls to MatMulNBits (n-bit types), and save
    it as model.onnx (+ model.onnx.data when large). Returns the number of weights of the model."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))  # external data too: optimum writes model.onnx_data above 2 GiB
    g = model.graph
    n_params = sum(int(np.prod(t.dims)) for t in g.initializer if len(t.dims) >= 1)
    if wf.kind == "nbits":
        _quantize_matmuls(model, wf)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    big = sum(numpy_helper.to_array(t).nbytes for t in g.initializer) > EXTERNAL_DATA_BYTES
    onnx.save_model(model, str(dst), save_as_external_data=big, all_tensors_to_one_file=True, location=DATA_FILE)
    return n_params


def _quantize_matmuls(model, wf: WeightFormat) -> None:
    """MatMul(x, W) with W a 2-D float initializer (K, N) -> MatMulNBits, packed by Graph.linear; the
    MatMul that writes a graph output (the logits) is the output projection, at `wf.head()`'s bits."""
    from onnx import TensorProto, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    outputs = {o.name for o in g.output}
    nodes, used = [], set()
    for node in g.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        k = w.dims[0] if w is not None and len(w.dims) == 2 else 0
        if w is None or w.data_type != TensorProto.FLOAT or k % 16:
            nodes.append(node)
            continue
        part = Graph("part", wf)  # no sink: the packed tensors stay in part.inits
        part._n = len(nodes)
        head = wf.head() if node.output[0] in outputs else wf
        part.linear(node.name or node.output[0], node.input[0], numpy_helper.to_array(w).T, out=node.output[0], wf=head)
        nodes.extend(part.nodes)
        g.initializer.extend(part.inits.values())
        used.add(w.name)
    still = {i for n in nodes for i in n.input}
    kept = [t for t in g.initializer if t.name not in used or t.name in still]
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(kept)


def _dims(value) -> list[Any]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def _model_section(path: Path, config: dict, task: str, n_params: int, eos_ids: list[int]) -> dict:
    """The manifest's model numbers, from the exported graph where it states them (KV and logits shapes)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inputs = {i.name: _dims(i) for i in graph.input}
    outputs = {o.name: _dims(o) for o in graph.output}
    n_heads = int(config.get("num_attention_heads") or 0)
    hidden = int(config.get("hidden_size") or 0)
    positions = int(config.get("max_position_embeddings") or 2048)
    model: dict[str, Any] = {
        "model_type": config.get("model_type"),
        "architecture": (config.get("architectures") or [None])[0],
        "task": "text-generation" if task.startswith("text-generation") else task,
        "exporter": EXPORTER,
        "n_layers": int(config.get("num_hidden_layers") or 0),
        "n_heads": n_heads,
        "hidden_size": hidden,
        "max_positions": min(positions, 131072),
        "context_length": positions,
        "parameter_count": n_params,
        "eos_token_ids": eos_ids,
        "bos_token_id": config.get("bos_token_id"),
        "pad_token_id": config.get("pad_token_id"),
    }
    if model["task"] == "text-generation":
        past = inputs["past_key_values.0.key"]  # (batch, n_kv, past, head_dim)
        model.update(
            n_layers=sum(1 for n in inputs if n.startswith("past_key_values.") and n.endswith(".key")),
            n_kv_heads=int(past[1]),
            head_dim=int(past[3]),
            vocab_size=int(outputs["logits"][-1]),
            kv_cache="concat",
        )
    return model


def run(src: Path, config: dict, otype: OnnxType, target: Path, force: bool, eos_ids: list[int]):
    """(OnnxResult fields) size, bits per weight, seconds: export_one timed."""
    start = time.perf_counter()
    size, n_params = export_one(src, config, otype, target, force, eos_ids)
    return size, size * 8 / max(n_params, 1), time.perf_counter() - start
