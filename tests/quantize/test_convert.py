"""convert(): type parsing, bad input, the shared intermediate, requantizing, and every type in llama.cpp."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import gguf
import pytest

from edge.errors import (
    BadRequestError,
    NotFoundError,
    OutputExistsError,
    UnknownTypeError,
    UnsupportedArchitectureError,
)
from profiles.plan.planner import tensor_types
from profiles.plan.shape import read_model_shape
from quantize.convert import convert
from quantize.outputs import default_name
from quantize.quantizer import TYPES, intermediate_type, parse_types, quantize_file

ALL_TYPES = [t.name for t in TYPES.values() if not t.needs_imatrix]  # the types quantized without an imatrix


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_type_names():
    assert [t.name for t in parse_types("gguf:Q4_K_M,f16, q8_0,q4_k")] == ["Q4_K_M", "F16", "Q8_0"]
    with pytest.raises(UnknownTypeError) as e:
        parse_types("q4_k_m,q9_x")
    assert "'q9_x'" in e.value.message and "Q4_K_M" in e.value.message and "IQ4_NL" in e.value.message
    with pytest.raises(BadRequestError, match="needs an importance matrix"):
        parse_types("iq2_xxs")


def test_intermediate_choice():
    pick = lambda types, src: intermediate_type(parse_types(types), src).name  # noqa: E731
    assert pick("f16,q4_k_m", "F32") == "F16"  # quantize from the F16 the user gets
    assert pick("q4_k_m", "BF16") == "BF16"  # nothing requested in float: the source's type
    assert pick("bf16,f32,q8_0", "F16") == "F32"
    assert pick("bf16,f16", "BF16") == "BF16"


def test_default_name(tmp_path):
    assert default_name(tmp_path / "smollm2-135m-q4_1.gguf") == "smollm2-135m"
    assert default_name(tmp_path / "model.gguf") == "model"


def test_unsupported_architecture_names_supported_ones(tiny_checkpoint, tmp_path):
    src = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint("llama3"), src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "mamba"}))
    with pytest.raises(UnsupportedArchitectureError) as e:
        convert(src, "f16", tmp_path / "out", quiet=True)
    assert "'mamba'" in e.value.message and "llama" in e.value.message
    assert not (tmp_path / "out").exists()


def test_missing_inputs(tmp_path):
    with pytest.raises(NotFoundError, match="does not exist"):
        convert(tmp_path / "nope", "f16", tmp_path / "out", quiet=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match="no config.json"):
        convert(tmp_path / "empty", "f16", tmp_path / "out", quiet=True)


def test_unknown_type_writes_nothing(tiny_checkpoint, tmp_path):
    with pytest.raises(UnknownTypeError):
        convert(tiny_checkpoint("llama3"), "f16,q7", tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


def test_existing_output_refused_without_force(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    existing = out / "m-q8_0.gguf"
    existing.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="--force"):
        convert(tiny_checkpoint("llama3"), "f16,q8_0", out, name="m", quiet=True)
    assert existing.read_bytes() == b"keep me"
    assert sorted(p.name for p in out.iterdir()) == ["m-q8_0.gguf"]  # and nothing else was written
    convert(tiny_checkpoint("llama3"), "q8_0", out, name="m", quiet=True, force=True)
    assert gguf.GGUFReader(existing).tensors


def test_intermediate_is_removed_unless_kept(tiny_checkpoint, tmp_path):
    results = convert(tiny_checkpoint("llama3"), "q8_0", tmp_path / "a", name="m", quiet=True)
    assert [r.type for r in results] == ["Q8_0"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["m-q8_0.gguf"]
    kept = convert(tiny_checkpoint("llama3"), "q8_0", tmp_path / "b", name="m", quiet=True, keep_intermediate=True)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["m-f32.gguf", "m-q8_0.gguf"]
    assert [r.type for r in kept] == ["F32", "Q8_0"]


def test_quantized_type_is_made_from_the_requested_f16(tiny_checkpoint, tmp_path, anchor_tool):
    """`--to f16,q4_k_m` == llama-quantize on our F16 file, byte for byte."""
    results = {r.type: r for r in convert(tiny_checkpoint("llama3"), "f16,q4_k_m", tmp_path, name="m", quiet=True)}
    assert gguf.GGUFReader(results["F16"].path).fields[gguf.Keys.General.FILE_TYPE].contents() == 1
    again = tmp_path / "again" / "q4_k_m.gguf"
    quantize_file(results["F16"].path, again, TYPES["Q4_K_M"])
    assert sha256(again) == sha256(results["Q4_K_M"].path)
    # quantizing from an F32 intermediate instead would differ (proves the test can fail)
    f32 = convert(tiny_checkpoint("llama3"), "f32", tmp_path / "f32", name="m", quiet=True)[0].path
    from_f32 = tmp_path / "again" / "from-f32.gguf"
    quantize_file(f32, from_f32, TYPES["Q4_K_M"])
    assert sha256(from_f32) != sha256(results["Q4_K_M"].path)
    ref = tmp_path / "ref.gguf"  # llama.cpp's own llama-quantize (the anchor), built on first use
    subprocess.run(
        [str(anchor_tool("llama-quantize")), str(results["F16"].path), str(ref), "Q4_K_M"],
        check=True,
        capture_output=True,
    )
    assert sha256(ref) == sha256(results["Q4_K_M"].path)


def test_requantize_gguf_warns(tiny_checkpoint, tmp_path, capsys):
    q8 = convert(tiny_checkpoint("llama3"), "q8_0", tmp_path, name="m", quiet=True)[0].path
    results = convert(q8, "q4_0", tmp_path / "re", quiet=True)
    assert "requantizing compounds quantization error" in capsys.readouterr().err
    assert results[0].path == tmp_path / "re" / "m-q4_0.gguf"
    types = {t.tensor_type for t in gguf.GGUFReader(results[0].path).tensors}
    assert gguf.GGMLQuantizationType.Q4_0 in types


@pytest.mark.slow
def test_every_type_converts_loads_and_generates(tiny_checkpoint, tmp_path):
    import llama_cpp

    results = convert(tiny_checkpoint("llama3"), ",".join(ALL_TYPES), tmp_path, name="m", quiet=True)
    assert [r.type for r in results] == ALL_TYPES
    shape = read_model_shape(results[0].path)  # the planner predicts llama.cpp's choice for every tensor
    for r in results:
        predicted = {t.name: q for t, q in tensor_types(shape, r.type)}
        assert {t.name: t.tensor_type for t in gguf.GGUFReader(r.path).tensors} == predicted, r.type
        assert r.path.is_file() and r.size_bytes == r.path.stat().st_size and r.bits_per_weight > 2
        llm = llama_cpp.Llama(str(r.path), n_ctx=64, verbose=False, seed=1)
        out = llm.create_completion("hello world", max_tokens=4, temperature=0.0)
        assert out["usage"]["completion_tokens"] >= 1, r.type
        llm.close()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".edge-tmp-")]


@pytest.mark.slow
def test_imatrix_types_match_the_planner(tiny_checkpoint, tmp_path):
    import numpy as np

    from quantize.imatrix import Imatrix

    f16 = convert(tiny_checkpoint("llama3"), "f16", tmp_path, name="m", quiet=True)[0].path
    uniform = Imatrix()  # every input column equally important: enough for llama.cpp to accept the types
    for t in gguf.GGUFReader(f16).tensors:
        if t.name.startswith("blk.") and len(t.shape) == 2:
            uniform.sums[t.name], uniform.counts[t.name] = np.ones(int(t.shape[0])), 1
    shape = read_model_shape(f16)
    for qtype in (t for t in TYPES.values() if t.needs_imatrix):
        out = tmp_path / f"m-{qtype.file_suffix}.gguf"
        quantize_file(f16, out, qtype, importance=uniform.means())
        predicted = {t.name: q for t, q in tensor_types(shape, qtype.name)}
        assert {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors} == predicted, qtype.name
