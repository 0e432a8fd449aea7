"""Importance matrix: collected in-process through llama.cpp's eval callback on the real SmolLM2,
passed to llama_model_quantize; it changes the quantized tensors and unlocks the IQ2/IQ3 types."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from edge.errors import BadRequestError
from profiles.plan.planner import tensor_types
from profiles.plan.shape import read_model_shape
from quantize import imatrix as im
from quantize.convert import convert
from quantize.eval.text import default_eval_text
from quantize.quantizer import TYPES, parse_types, quantize_file

MATMUL_WEIGHTS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@pytest.fixture(scope="module")
def smol_f32(smollm2_path, module_tmp) -> Path:
    out = module_tmp("imatrix")
    return Path(convert(smollm2_path, "f32", out, quiet=True, name="smol")[0].path)


@pytest.fixture(scope="module")
def matrix(smol_f32) -> im.Imatrix:
    return im.compute_imatrix(smol_f32, default_eval_text().read(), ctx=512, max_chunks=2)


def test_types_needing_an_imatrix_are_refused_without_one_and_allowed_with_one():
    with pytest.raises(BadRequestError, match="importance matrix"):
        parse_types("q4_k_m,iq2_xxs")
    with pytest.raises(BadRequestError, match="importance matrix"):
        parse_types("iq2_xxs", have_imatrix=False)
    assert [t.name for t in parse_types("gguf:q4_k_m,IQ2_XXS,iq3_xxs", have_imatrix=True)] == [
        "Q4_K_M",
        "IQ2_XXS",
        "IQ3_XXS",
    ]


def test_weight_names_drop_graph_decorations():
    assert im.weight_name(b"blk.3.attn_q.weight") == "blk.3.attn_q.weight"
    assert im.weight_name(b"node_7#blk.3.ffn_up.weight#0") == "blk.3.ffn_up.weight"


@pytest.mark.slow
def test_collects_every_block_matmul_weight_with_token_counts(matrix, smol_f32):
    reader = gguf.GGUFReader(smol_f32)
    n_layer = reader.fields["llama.block_count"].parts[-1][0]
    expected = {f"blk.{i}.{w}.weight" for i in range(n_layer) for w in MATMUL_WEIGHTS}
    assert set(matrix.sums) == expected
    assert set(matrix.counts.values()) == {2 * 512}  # every token of both chunks
    shapes = {t.name: t.shape for t in reader.tensors}
    means = matrix.means()
    for name, values in means.items():
        assert values.dtype == np.float32 and values.shape == (shapes[name][0],)  # one per input column
        assert np.isfinite(values).all() and (values >= 0).all() and values.max() > 0


@pytest.mark.slow
def test_imatrix_changes_the_quantized_tensors_and_unlocks_iq2(matrix, smol_f32, tmp_path):
    plain, weighted, iq2 = tmp_path / "plain.gguf", tmp_path / "weighted.gguf", tmp_path / "iq2.gguf"
    quantize_file(smol_f32, plain, TYPES["Q4_K_M"])
    quantize_file(smol_f32, weighted, TYPES["Q4_K_M"], importance=matrix.means())
    a = {t.name: bytes(t.data) for t in gguf.GGUFReader(plain).tensors}
    b = {t.name: bytes(t.data) for t in gguf.GGUFReader(weighted).tensors}
    assert a.keys() == b.keys()
    changed = {n for n in a if a[n] != b[n]}
    assert any(".ffn_down." in n for n in changed) and any(".attn_q." in n for n in changed)
    assert "token_embd.weight" not in changed  # no activations collected for it
    quantize_file(smol_f32, iq2, TYPES["IQ2_XXS"], importance=matrix.means())
    assert iq2.stat().st_size < plain.stat().st_size
    shape = read_model_shape(smol_f32)  # the planner predicts llama.cpp's choice for every tensor
    for path, name, imatrix in ((plain, "Q4_K_M", False), (weighted, "Q4_K_M", True), (iq2, "IQ2_XXS", True)):
        predicted = {t.name: q for t, q in tensor_types(shape, name, imatrix)}
        assert {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors} == predicted, name


@pytest.mark.slow
def test_imatrix_is_reproducible(matrix, smol_f32):
    again = im.compute_imatrix(smol_f32, default_eval_text().read(), ctx=512, max_chunks=2)
    assert again.counts == matrix.counts
    for name in matrix.sums:
        np.testing.assert_array_equal(again.sums[name], matrix.sums[name])
