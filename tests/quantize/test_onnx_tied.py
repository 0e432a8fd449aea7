"""A tied embedding in a quantized ONNX export is read from its output projection's blocks.

Small models tie the embedding to the output projection (SmolLM2, every Gemma), and that matrix is
most of a small model (Gemma-3-270M: 262144 x 640). An n-bit export gathers the embedding's rows
from the MatMulNBits blocks of the head (GatherBlockQuantized over the same initializers, as
onnxruntime-genai does) instead of storing the table again in float16; an untied embedding (Llama
3.1, Phi-3) is a table of its own in 8-bit blocks.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from quantize.onnx.graph import Graph, WeightFormat

V, K = 96, 64  # vocab, hidden


def _rows_and_columns(wf: WeightFormat, stats=None) -> tuple[np.ndarray, np.ndarray]:
    """(the rows the graph gathers for every id, the head applied to each unit vector of K): the
    second transposed is what MatMulNBits multiplies by, dequantized."""
    import onnxruntime as ort

    w = np.random.default_rng(3).standard_normal((V, K)).astype(np.float32)
    w[:, 5] *= 0.05  # small weights reading a channel of large activations: AWQ scales it up
    g = Graph("t", wf, stats=stats)
    g.input("ids", TensorProto.INT64, [V])
    g.input("x", TensorProto.FLOAT, [K, K])
    rows = g.gather_rows("lm_head", w, "ids", wf)
    assert rows is not None
    g.op("Identity", [rows], outputs=["rows"])
    assert g.shared_linear("lm_head", "x", out="cols") == "cols"  # from the blocks alone, no weights passed
    assert g.shared_linear("lm_head", "x") is None  # taken once
    g.output("rows", TensorProto.FLOAT, [V, K])
    g.output("cols", TensorProto.FLOAT, [K, V])
    model = g.model()
    assert not any(i.name == "embed_tokens" for i in model.graph.initializer)
    assert sum(n.op_type == "MatMulNBits" for n in model.graph.node) == 1  # quantized once, read twice
    scaled = any(i.name == "lm_head.input_scale" for i in model.graph.initializer)
    assert scaled == (wf.method == "awq"), "the calibrated case must exercise scales other than 1"
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got_rows, cols = s.run(None, {"ids": np.arange(V, dtype=np.int64), "x": np.eye(K, dtype=np.float32)})
    return got_rows, cols


@pytest.mark.parametrize(
    "wf",
    [
        WeightFormat("nbits", bits=4, accuracy_level=1, method="rtn"),
        WeightFormat("nbits", bits=4, accuracy_level=1, method="search"),
        WeightFormat("nbits", bits=8, accuracy_level=1, method="rtn"),
    ],
    ids=["int4-rtn", "int4-search", "int8"],
)
def test_gathered_rows_are_the_heads_dequantized_weights(wf):
    rows, cols = _rows_and_columns(wf)
    np.testing.assert_array_equal(rows, cols.T)


def test_calibrated_head_gathers_rows_divided_back_by_its_scales():
    """awq stores W * s (the input divided by s): the gathered rows are divided by s too."""
    act = np.ones(K, dtype=np.float32)
    act[5] = 1e4
    rows, cols = _rows_and_columns(WeightFormat("nbits", bits=4, accuracy_level=1, method="awq"), {"lm_head": act})
    np.testing.assert_allclose(rows, cols.T, rtol=1e-6, atol=1e-7)


def test_formats_that_cannot_share_keep_their_own_table():
    w = np.zeros((V, K), dtype=np.float32)
    for wf in (
        WeightFormat("nbits", bits=4, symmetric=False),  # zero points: not MatMulNBits' default
        WeightFormat("nbits", bits=4, block_size=128),  # blocks do not tile K = 64
        WeightFormat("fp16"),
    ):
        assert Graph("t", wf).gather_rows("lm_head", w, "ids", wf) is None


@pytest.mark.parametrize(
    ("kind", "table"), [("llama3-tied", "lm_head"), ("llama3", "embed_tokens"), ("gemma3", "lm_head")]
)
def test_export_stores_the_embedding_in_blocks(kind, table, tiny_checkpoint, tmp_path):
    """Tied: the output projection's blocks, nothing else; untied: a table of its own in 8-bit blocks."""
    from quantize.onnx.export import export_onnx

    (r,) = export_onnx(tiny_checkpoint(kind), ["onnx:int4_head4"], tmp_path, quiet=True, name=kind)
    model = onnx.load(str(r.path / "model.onnx"), load_external_data=False)
    names = {i.name for i in model.graph.initializer}
    assert "embed_tokens" not in names  # no float table
    (gather,) = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    (reshape,) = [n for n in model.graph.node if n.output[0] == gather.input[0]]
    assert reshape.input[0] == f"{table}.qweight"
    bits = next(a.i for a in gather.attribute if a.name == "bits")
    assert bits == (4 if table == "lm_head" else 8)
