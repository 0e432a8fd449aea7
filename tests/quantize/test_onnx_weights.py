"""WeightSink: initializers written while the graph is built read back exactly, inline or external."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from quantize.onnx.graph import Graph, WeightFormat
from quantize.onnx.weights import ALIGN, WeightSink


def _graph(sink) -> tuple[Graph, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    arrays = {
        "big.f32": rng.standard_normal((64, 48)).astype(np.float32),
        "big.f16": rng.standard_normal((33, 40)).astype(np.float16),
        "big.u8": rng.integers(0, 255, (7, 300), dtype=np.uint8),
        "small": np.arange(5, dtype=np.float32),
    }
    g = Graph("t", WeightFormat("fp32"), sink)
    x = g.input("x", TensorProto.FLOAT, [1, 48])
    y = g.op("MatMul", [x, g.const("big.f32", arrays["big.f32"].T.copy())])[0]
    for name in ("big.f16", "big.u8", "small", "big.f32"):  # the second "big.f32" is deduplicated
        g.const(name, arrays[name])
    g.output(y, TensorProto.FLOAT, [1, 64])
    return g, arrays


@pytest.mark.parametrize("external", [False, True])
def test_written_initializers_read_back_exactly(tmp_path, external):
    path = tmp_path / "model.onnx"
    sink = WeightSink(path, external=external)
    g, arrays = _graph(sink)
    sink.finish(g.model())
    model = onnx.load(str(path))  # external data resolved from the folder
    got = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert sorted(got) == sorted(arrays)
    np.testing.assert_array_equal(got["big.f32"], arrays["big.f32"].T)
    for name in ("big.f16", "big.u8", "small"):
        np.testing.assert_array_equal(got[name], arrays[name])
    assert len(model.graph.node) == 1 and model.graph.output[0].name
    onnx.checker.check_model(str(path))
    raw = onnx.load(str(path), load_external_data=False)
    ext = [t for t in raw.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    if external:
        assert {t.name for t in ext} == {"big.f32", "big.f16", "big.u8"}  # "small" stays in the proto
        offsets = [int(next(e.value for e in t.external_data if e.key == "offset")) for t in ext]
        assert all(o % ALIGN == 0 for o in offsets)
    else:
        assert not ext and not (tmp_path / "model.onnx.data").exists()


def test_onnxruntime_runs_an_inline_written_model(tmp_path):
    import onnxruntime as ort

    path = tmp_path / "model.onnx"
    sink = WeightSink(path, external=False)
    g, arrays = _graph(sink)
    sink.finish(g.model())
    x = np.ones((1, 48), dtype=np.float32)
    (y,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(y, x @ arrays["big.f32"].T, rtol=1e-4, atol=1e-5)  # summation order
