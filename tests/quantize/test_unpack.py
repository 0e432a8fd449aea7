"""unpack: GGUF -> HF checkpoint, exact round trips and a config transformers accepts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge.errors import ModelFormatError, NotFoundError, OutputExistsError
from quantize.convert import convert
from quantize.unpack import unpack


def _load(path):
    from safetensors.numpy import load_file

    return load_file(path)


@pytest.mark.parametrize("kind", ["llama3", "llama3-tied", "llama2"])
def test_round_trip_is_exact(tiny_checkpoint, tmp_path, kind):
    src = tiny_checkpoint(kind)
    f32 = convert(src, "f32", tmp_path, name=kind, quiet=True)[0].path
    out = unpack(f32, tmp_path / "hf", quiet=True)
    want, got = _load(src / "model.safetensors"), _load(out / "model.safetensors")
    if kind == "llama3-tied":
        want.pop("lm_head.weight", None)  # tied: transformers may or may not save it
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)  # q/k permutation undone
    config, orig = json.loads((out / "config.json").read_text()), json.loads((src / "config.json").read_text())
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
        "rms_norm_eps",
        "rope_theta",
        "tie_word_embeddings",
        "max_position_embeddings",
        "model_type",
    ):
        assert config[key] == orig[key], key
    assert (out / "tokenizer.json").is_file()


def test_unpacked_checkpoint_converts_back_identically(tiny_checkpoint, tmp_path):
    f32 = convert(tiny_checkpoint("llama2"), "f32", tmp_path / "a", name="m", quiet=True)[0].path
    hf = unpack(f32, tmp_path / "hf", quiet=True)
    again = convert(hf, "f32", tmp_path / "b", name="m", quiet=True)[0].path
    import gguf

    a, b = gguf.GGUFReader(f32), gguf.GGUFReader(again)
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for ta, tb in zip(a.tensors, b.tensors):
        np.testing.assert_array_equal(ta.data, tb.data, err_msg=ta.name)


@pytest.mark.slow
def test_quantized_unpack_loads_in_transformers(tiny_checkpoint, tmp_path):
    import torch
    import transformers

    # llama2: unpack cannot yet rebuild llama3 rope_scaling from the rope_freqs tensor (it warns)
    q8 = convert(tiny_checkpoint("llama2"), "q8_0", tmp_path, name="m", quiet=True)[0].path
    out = unpack(q8, tmp_path / "hf", quiet=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoint("llama2"), local_files_only=True)
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        got, want = model(ids).logits, ref(ids).logits
    # Q8_0 error compounds through the layers of these large-init random weights (max ~14 % of the
    # logits' std here); greedy picks agree and the mean error stays small. The F32 round trip is exact.
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert (got - want).abs().mean() < 0.05 * want.std()


def test_errors(tmp_path, tiny_checkpoint):
    with pytest.raises(NotFoundError):
        unpack(tmp_path / "missing.gguf", tmp_path / "o")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 20)
    with pytest.raises(ModelFormatError):
        unpack(bad, tmp_path / "o")
    f32 = convert(tiny_checkpoint("llama3"), "f32", tmp_path, name="m", quiet=True)[0].path
    (tmp_path / "exists").mkdir()
    with pytest.raises(OutputExistsError):
        unpack(f32, tmp_path / "exists", quiet=True)
