"""The safetensors reader: bounds checks on crafted files, bf16 widening, shards, and no output on bad input."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from edge.errors import ModelFormatError, NotFoundError
from quantize.checkpoint import Checkpoint, OutEntry, read_header, write_safetensors
from quantize.convert import convert


def _raw_file(path: Path, header: dict, data: bytes) -> Path:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def test_offsets_past_end_of_file_name_file_and_tensor(tmp_path):
    f = _raw_file(
        tmp_path / "model.safetensors", {"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}, b"\0" * 32
    )
    with pytest.raises(ModelFormatError) as e:
        read_header(f)
    assert "model.safetensors" in e.value.message and "'w'" in e.value.message
    assert "past the end" in e.value.message


def test_header_length_past_end_of_file(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(ModelFormatError, match="header length 10000 points past the end"):
        read_header(f)


@pytest.mark.parametrize(
    "entry, why",
    [
        ({"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 32]}, "need 64"),  # size disagrees with shape
        ({"dtype": "Q4", "shape": [4], "data_offsets": [0, 2]}, "unsupported dtype"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "invalid shape"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}, "past the end"),  # begin > end
    ],
)
def test_malformed_entries(tmp_path, entry, why):
    f = _raw_file(tmp_path / "a.safetensors", {"t": entry}, b"\0" * 64)
    with pytest.raises(ModelFormatError, match=why):
        read_header(f)


def test_not_json(tmp_path):
    f = tmp_path / "a.safetensors"
    f.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{[")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        read_header(f)


def test_bf16_is_widened_exactly(tmp_path):
    values = np.array([[1.0, -2.5], [3.140625, 1e-3]], dtype=np.float32)  # (2, 2)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)  # truncated bf16
    _raw_file(
        tmp_path / "m.safetensors", {"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}, bits.tobytes()
    )
    ckpt = Checkpoint.open(tmp_path)
    got = ckpt.load("w")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, (bits.astype(np.uint32) << 16).view(np.float32))
    assert ckpt.float_dtype() == "BF16"


def test_writer_and_reader_round_trip(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)  # (3, 4)
    h = np.arange(5, dtype=np.float16)  # (5,)
    write_safetensors(
        tmp_path / "x.safetensors", [OutEntry("a", "F32", (3, 4), lambda: a), OutEntry("h", "F16", (5,), lambda: h)]
    )
    from safetensors.numpy import load_file  # the reference implementation reads our file

    ref = load_file(tmp_path / "x.safetensors")
    np.testing.assert_array_equal(ref["a"], a)
    np.testing.assert_array_equal(ref["h"], h)
    np.testing.assert_array_equal(Checkpoint.open(tmp_path).load("a"), a)


def test_sharded_index_with_missing_shard(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
    _raw_file(
        tmp_path / "model-00001-of-00002.safetensors",
        {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
        b"\0" * 4,
    )
    with pytest.raises(NotFoundError, match="model-00002-of-00002.safetensors"):
        Checkpoint.open(tmp_path)


def test_sharded_checkpoint_reads_all_shards(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})
    )
    _raw_file(
        tmp_path / "s1.safetensors",
        {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
        np.float32(1.5).tobytes(),
    )
    _raw_file(
        tmp_path / "s2.safetensors",
        {"b": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}},
        np.float16(2.5).tobytes(),
    )
    ckpt = Checkpoint.open(tmp_path)
    assert ckpt.load("a")[0] == 1.5 and ckpt.load("b")[0] == 2.5


def test_no_weights(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(NotFoundError, match="pytorch_model.bin checkpoints are not supported"):
        Checkpoint.open(tmp_path)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_truncated_checkpoint_gives_error_and_no_output(tiny_checkpoint, tmp_path):
    src = _copy(tiny_checkpoint("llama3"), tmp_path / "ckpt")
    weights = src / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])  # cut the last tensor short
    out = tmp_path / "out"
    with pytest.raises(ModelFormatError, match="past the end"):
        convert(src, ["f16", "q8_0"], out, quiet=True)
    assert not out.exists() or not list(out.iterdir())


def test_shapes_disagreeing_with_config(tiny_checkpoint, tmp_path):
    src = _copy(tiny_checkpoint("llama3"), tmp_path / "ckpt")
    config = json.loads((src / "config.json").read_text())
    config["intermediate_size"] = 512  # the weights say 256
    (src / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    with pytest.raises(ModelFormatError, match=r"shape \[256, 128\] but config.json implies \[512, 128\]"):
        convert(src, ["f16"], out, quiet=True)
    assert not out.exists() or not list(out.iterdir())


def test_unknown_tensor_is_an_error(tiny_checkpoint, tmp_path):
    src = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint("llama3"), src)
    from safetensors.numpy import load_file, save_file

    tensors = load_file(src / "model.safetensors")
    tensors["model.layers.0.mlp.experts.0.weight"] = np.zeros((2, 2), np.float32)
    save_file(tensors, src / "model.safetensors")
    with pytest.raises(ModelFormatError, match="does not know: model.layers.0.mlp.experts.0.weight"):
        convert(src, ["f16"], tmp_path / "out", quiet=True)
