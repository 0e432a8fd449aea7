"""Initializers written to disk as the graph is built: an export holds one weight at a time.

Building every initializer into the ModelProto and then calling `onnx.save_model` holds the weights
three times (the TensorProtos, their copy into the graph, the serialized bytes): exporting the
540 MB fp32 SmolLM2 peaked at 3.0 GB. Here each weight leaves memory as soon as the graph has it:

- `external` (models above EXTERNAL_DATA_BYTES): its bytes are appended to `model.onnx.data`
  (4096-aligned, so onnxruntime can map them) and the graph keeps a small TensorProto that points
  there (ONNX external data: location, offset, length).
- inline (smaller models, one self-contained `model.onnx`): its bytes are written to `model.onnx`
  straight away as a protobuf fragment `ModelProto.graph { initializer: <tensor> }`. Protobuf
  merges repeated occurrences of an embedded message field, so the file -- these fragments followed
  by the serialized model without those initializers -- parses as one model with every
  initializer (onnx.load and onnxruntime both read it so; tests check the logits).

Tensors under 1 KiB (norm scales, small constants) stay in the graph proto either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from onnx import ModelProto, TensorProto, helper

SMALL = 1024  # bytes: below this a tensor stays in the graph proto
ALIGN = 4096  # external data offsets, as onnx's own writer aligns for mmap
_GRAPH, _INITIALIZER = 7, 5  # field numbers: ModelProto.graph, GraphProto.initializer


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _header(field: int, length: int) -> bytes:
    """Tag and length of a length-delimited protobuf field."""
    return _varint(field << 3 | 2) + _varint(length)


def _tensor(name: str, array: np.ndarray) -> TensorProto:
    t = TensorProto()
    t.name = name
    t.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
    t.dims.extend(array.shape)
    return t


class WeightSink:
    """Where `Graph.const` puts initializers of SMALL bytes or more. `finish(model)` writes the model."""

    def __init__(self, model_path: Path, *, external: bool):
        self.model_path = Path(model_path)
        self.external = external
        self.data_path = self.model_path.with_name(self.model_path.name + ".data")
        self._f: BinaryIO = open(self.data_path if external else self.model_path, "wb")
        self.bytes = 0  # weight bytes written

    def add(self, name: str, array: np.ndarray) -> TensorProto | None:
        """Write `array`; returns the TensorProto the graph keeps (external), or None (inline)."""
        array = np.ascontiguousarray(array)
        t = _tensor(name, array)
        self.bytes += array.nbytes
        if self.external:
            pad = -self._f.tell() % ALIGN
            self._f.write(b"\0" * pad)
            offset = self._f.tell()
            self._f.write(array.data.cast("B"))
            t.data_location = TensorProto.EXTERNAL
            for key, value in (
                ("location", self.data_path.name),
                ("offset", str(offset)),
                ("length", str(array.nbytes)),
            ):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            return t
        head = t.SerializeToString()  # name, type, dims; raw_data (field 9) follows without a copy
        raw = _header(9, array.nbytes)
        tensor_len = len(head) + len(raw) + array.nbytes
        self._f.write(_header(_GRAPH, len(_header(_INITIALIZER, tensor_len)) + tensor_len))
        self._f.write(_header(_INITIALIZER, tensor_len))
        self._f.write(head)
        self._f.write(raw)
        self._f.write(array.data.cast("B"))
        return None

    def finish(self, model: ModelProto) -> None:
        """Write the model (its small initializers, nodes, inputs and outputs) and close the files."""
        if self.external:
            self._f.close()
            self.model_path.write_bytes(model.SerializeToString())
        else:
            self._f.write(model.SerializeToString())
            self._f.close()

    def close(self) -> None:
        self._f.close()
