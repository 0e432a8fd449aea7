"""ONNX model folders: every external-data file a model names must stay inside the folder.

An ONNX tensor may keep its bytes in another file (`external_data` entries: location, offset,
length). onnxruntime opens that location relative to the model, so `../../etc/shadow`, an absolute
path or a symlink pointing out of the folder would read any file the server can. We parse the
protobuf (the `onnx` package, imported only here: GGUF serving never needs it) without loading the
external data and refuse such locations before onnxruntime sees the folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

from edge.errors import DependencyMissingError, ModelFormatError, NotFoundError


def validate_onnx_folder(folder: Path) -> list[Path]:
    """The .onnx files of `folder`, after checking every external-data location they name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError(f"ONNX model folder {folder} does not exist or is not a folder")
    root = folder.resolve()
    models = sorted(folder.glob("*.onnx"))
    if not models:
        raise ModelFormatError(f"{folder} holds no .onnx model")
    onnx = _import_onnx()
    for model_path in models:
        _inside(root, model_path, f"{model_path.name} itself")
        try:
            model = onnx.load(str(model_path), load_external_data=False)
        except Exception as e:  # protobuf's DecodeError and friends
            raise ModelFormatError(f"{model_path.name} is not a readable ONNX model: {e}") from None
        for tensor in _tensors(model.graph):
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                _check_external(root, model_path, tensor)
    return models


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise DependencyMissingError(
            "checking an ONNX model folder needs the onnx package: pip install 'edge-llm[onnx]'"
        ) from None
    return onnx


def _tensors(graph) -> Iterator:
    """Every TensorProto of a graph: initializers, sparse initializers, node attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def _check_external(root: Path, model_path: Path, tensor) -> None:
    entries = {e.key: e.value for e in tensor.external_data}
    location = entries.get("location", "")
    what = f"{model_path.name}: tensor {tensor.name!r} keeps its data in {location!r}"
    if not location:
        raise ModelFormatError(f"{what}: no location")
    if (
        PurePosixPath(location).is_absolute()
        or PureWindowsPath(location).is_absolute()
        or PureWindowsPath(location).drive
    ):
        raise ModelFormatError(f"{what}, an absolute path; external data must stay inside the model folder")
    if ".." in PurePosixPath(location.replace("\\", "/")).parts:
        raise ModelFormatError(f"{what}, which leaves the model folder; external data must stay inside it")
    target = _inside(root, model_path.parent / location, what)
    if not target.is_file():
        raise ModelFormatError(f"{what}, which does not exist; copy the whole model folder")
    _check_range(target, entries, what)


def _inside(root: Path, path: Path, what: str) -> Path:
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise ModelFormatError(f"{what} resolves to {real}, outside the model folder {root} (a symlink?); refused")
    return real


def _check_range(target: Path, entries: dict[str, str], what: str) -> None:
    try:
        offset, length = int(entries.get("offset", 0)), int(entries.get("length", 0))
    except ValueError:
        raise ModelFormatError(f"{what} with a non-numeric offset or length") from None
    size = target.stat().st_size
    if offset < 0 or length < 0 or offset + length > size:
        raise ModelFormatError(f"{what} at bytes {offset}..{offset + length}, past the end of the {size}-byte file")
