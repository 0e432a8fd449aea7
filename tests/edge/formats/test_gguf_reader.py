"""edge.formats.gguf, the one GGUF reader: its users agree on the real bundled files, and an
independent walker (tests/support/fuzz/gguf_fields.py) reads the same tensor table."""

from __future__ import annotations

import pytest

from edge.formats.gguf import ArrayRef, open_gguf, read_gguf_meta, token_text
from edge.formats.validate import validate_gguf
from profiles.plan.shape import shape_from_gguf
from quantize.vocab import vocab_from_gguf
from tests.support.fuzz.gguf_fields import parse


@pytest.fixture(params=["smollm2", "gemma3"])
def model(request):
    return request.getfixturevalue(f"{request.param}_path")


def test_validator_planner_and_vocab_reader_agree(model):
    summary = validate_gguf(model)
    shape = shape_from_gguf(model)
    vocab = vocab_from_gguf(model)
    with open_gguf(model) as f:
        table = [(t.name, t.shape, t.ggml_type) for t in f.tensors]
        data_offset = f.meta.data_offset
    assert summary.n_tensors == len(shape.tensors) == len(table)
    assert [(t.name, t.shape, t.ggml_type) for t in shape.tensors] == table
    assert summary.parameter_count == shape.n_params
    assert summary.n_vocab == shape.n_vocab == len(vocab.tokens)
    assert summary.data_offset == shape.header_bytes == data_offset


def test_tensor_table_matches_an_independent_walker(model):
    layout, _, _ = parse(model)
    with open_gguf(model) as f:
        ours = [(t.name, list(t.shape), int(t.ggml_type), t.offset) for t in f.tensors]
    assert ours == [(t.name.decode(), t.dims, t.ggml_type, t.offset) for t in layout.tensors]


def test_arrays_stay_in_the_file_until_decoded(smollm2_path):
    meta = read_gguf_meta(smollm2_path)
    tokens = meta.kv["tokenizer.ggml.tokens"]
    assert isinstance(tokens, ArrayRef) and tokens.count == 49152 and meta.tensors is None
    with open_gguf(smollm2_path, tensors=False) as f:
        decoded = f.strings(tokens, "tokenizer.ggml.tokens")
    bos = meta.kv["tokenizer.ggml.bos_token_id"]
    assert token_text(smollm2_path, meta, bos) == decoded[bos]
    assert token_text(smollm2_path, meta, 49152) is None
