"""edge.formats.validate on the real bundled models and on crafted files: each refusal names its problem.

Crafted files are sparse copies of the real headers with one thing changed (tests/support/fuzz/gguf_fields.py).
Two tests prove the point with the real tools in a child process: gguf's own GGUFReader hangs and
grows without bound on a tiny file we refuse at once, and llama.cpp kills the process on an emoji
with a SentencePiece vocabulary that lacks byte tokens, which we refuse.
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import pytest

from edge.errors import ModelFormatError
from edge.formats.validate import llama_vocab_names as names
from edge.formats.validate import validate_gguf
from tests.support.fuzz.gguf_fields import VT, decode_scalars, enc_array, enc_str, parse

VOCAB_CPP = Path("/work/anchors/llama_cpp_python-0.3.36/vendor/llama.cpp/src/llama-vocab.cpp")
K = gguf.Keys.Tokenizer


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return parse(smollm2_path)[0]


@pytest.fixture(scope="module")
def gemma3(gemma3_path):
    return parse(gemma3_path)[0]


def refused(layout, tmp_path, *fragments: str) -> str:
    path = layout.write(tmp_path / "crafted.gguf")
    with pytest.raises(ModelFormatError) as e:
        validate_gguf(path)
    for f in fragments:
        assert f in e.value.message, e.value.message
    return e.value.message


# --- the real files -----------------------------------------------------------------------------


def test_bundled_smollm2_passes(smollm2_path):
    s = validate_gguf(smollm2_path)
    assert (s.version, s.n_tensors, s.architecture, s.tokenizer_model, s.tokenizer_pre) == (
        3,
        272,
        "llama",
        "gpt2",
        "smollm",
    )
    assert s.n_vocab == 49152 and s.alignment == 32
    assert s.data_offset + s.data_size == s.file_size == smollm2_path.stat().st_size
    assert 130e6 < s.parameter_count < 140e6 and s.tensor_types["Q4_1"] == 210
    assert len(s.warnings) == 1 and "0xF5" in s.warnings[0]  # byte-level BPE lacking a few bytes: accepted


def test_bundled_gemma3_passes(gemma3_path):
    s = validate_gguf(gemma3_path)
    assert (s.architecture, s.tokenizer_model, s.n_vocab, s.n_tensors) == ("gemma3", "llama", 262144, 236)
    assert s.data_offset + s.data_size == s.file_size and not s.warnings


def test_sparse_rewrite_of_a_real_header_passes(smollm2, tmp_path):
    """The crafting tool itself: an unchanged rewrite is valid (so each refusal below is the change's)."""
    assert validate_gguf(smollm2.write(tmp_path / "same.gguf")).n_vocab == 49152


# --- header and key/values ----------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 1, 4, 0xFFFFFFFF])
def test_versions_other_than_2_and_3_are_refused(smollm2, tmp_path, version):
    lay = smollm2.copy()
    lay.version = version
    refused(lay, tmp_path, f"version {version} is not supported")


def test_version_2_is_accepted(smollm2, tmp_path):
    lay = smollm2.copy()
    lay.version = 2
    assert validate_gguf(lay.write(tmp_path / "v2.gguf")).version == 2


def test_not_gguf(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ModelFormatError, match="bad magic"):
        validate_gguf(tmp_path / "x.gguf")


def test_duplicate_key(smollm2, tmp_path):
    lay = smollm2.copy()
    lay.kv.append(lay.kv[0])
    refused(lay, tmp_path, "general.architecture appears twice")


def test_empty_key(smollm2, tmp_path):
    lay = smollm2.copy()
    lay.kv.append((b"", VT.UINT32, struct.pack("<I", 1)))
    refused(lay, tmp_path, "is empty")


def test_unknown_value_type(smollm2, tmp_path):
    lay = smollm2.copy()
    lay.kv.append((b"x.bad", 13, b""))
    refused(lay, tmp_path, "x.bad has an unknown value type 13")


def test_nested_arrays_are_refused(smollm2, tmp_path):
    lay = smollm2.copy()
    lay.set("x.nested", VT.ARRAY, struct.pack("<IQ", VT.ARRAY, 1) + enc_array(VT.UINT8, [1]))
    refused(lay, tmp_path, "array of arrays")


def test_array_longer_than_the_file(smollm2, tmp_path):
    lay = smollm2.copy()
    lay.set("x.long", VT.ARRAY, struct.pack("<IQ", VT.UINT64, 1 << 40))
    refused(lay, tmp_path, "x.long", "limit")


@pytest.mark.parametrize("key,vtype,raw,fragment", [
    ("general.alignment", VT.UINT64, struct.pack("<Q", 32), "must be a u32"),
    ("general.alignment", VT.UINT32, struct.pack("<I", 33), "33, not a power of two"),
    ("general.alignment", VT.UINT32, struct.pack("<I", 0), "0, not a power of two"),
    ("general.architecture", VT.UINT32, struct.pack("<I", 7), "general.architecture must be a string"),
    ("llama.context_length", VT.FLOAT32, struct.pack("<f", 2048.0), "llama.context_length must be a uint32"),
    ("tokenizer.ggml.add_bos_token", VT.UINT8, b"\x01", "add_bos_token must be a bool"),
    ("tokenizer.ggml.tokens", VT.ARRAY, enc_array(VT.INT32, [1, 2, 3]), "tokens must be an array of strings"),
    ("tokenizer.ggml.token_type", VT.ARRAY, enc_array(VT.STRING, [b"a"]), "token_type must be an array of i32"),
    ("tokenizer.ggml.bos_token_id", VT.STRING, enc_str("1"), "bos_token_id must be an integer"),
    ("tokenizer.ggml.model", VT.UINT32, struct.pack("<I", 1), "tokenizer.ggml.model must be a string"),
])  # fmt: skip
def test_wrong_value_types(smollm2, tmp_path, key, vtype, raw, fragment):
    lay = smollm2.copy()
    lay.set(key, vtype, raw)
    refused(lay, tmp_path, fragment)


# --- tensor table and data layout ---------------------------------------------------------------


def test_overlapping_tensors(smollm2, tmp_path):
    lay = smollm2.copy()
    lay.tensors[2].offset = lay.tensors[1].offset
    refused(lay, tmp_path, "blk.0.ffn_down.weight", "overlaps tensor blk.0.attn_norm.weight")


def test_misaligned_offset(smollm2, tmp_path):
    lay = smollm2.copy()
    lay.tensors[1].offset += 1
    refused(lay, tmp_path, "not aligned to 32 bytes")


def test_gap_between_tensors(smollm2, tmp_path):
    lay = smollm2.copy()
    lay.tensors[1].offset += 32
    refused(lay, tmp_path, "packed in order")


def test_data_past_the_end_of_the_file(smollm2, tmp_path):
    lay = smollm2.copy()
    lay.data_size -= 1
    refused(lay, tmp_path, "truncated", lay.tensors[-1].name.decode())


def test_duplicate_tensor_name(smollm2, tmp_path):
    lay = smollm2.copy()
    lay.tensors[2].name = lay.tensors[1].name
    refused(lay, tmp_path, "blk.0.attn_norm.weight appears twice")


def test_long_tensor_name(smollm2, tmp_path):
    lay = smollm2.copy()
    lay.tensors[1].name = b"x" * 64
    refused(lay, tmp_path, "llama.cpp allows 63")


@pytest.mark.parametrize("change,fragment", [
    (lambda t: t.dims.extend([1, 1, 1]), "5 dimensions; ggml allows at most 4"),
    (lambda t: setattr(t, "ggml_type", 4), "unknown ggml type 4"),  # Q4_2, removed from ggml
    (lambda t: setattr(t, "ggml_type", 42), "unknown ggml type 42"),  # newer than this gguf
    (lambda t: setattr(t, "dims", [1 << 62, 4]), "more than 2**63 elements"),
    (lambda t: setattr(t, "dims", [1536, -1]), "zero or negative"),
    (lambda t: setattr(t, "dims", [1537, 576]), "not a multiple of its block size 32"),
])  # fmt: skip
def test_bad_tensor_info(smollm2, tmp_path, change, fragment):
    lay = smollm2.copy()
    change(lay.tensors[2])  # blk.0.ffn_down.weight, Q4_1 (1536, 576)
    refused(lay, tmp_path, fragment)


def test_byte_size_is_computed_as_ggml_does(smollm2, tmp_path):
    """Q4_1 is 20 bytes per 32 elements: a tensor declared F32 no longer fits its slot."""
    lay = smollm2.copy()
    lay.tensors[2].ggml_type = gguf.GGMLQuantizationType.F32
    refused(lay, tmp_path, "overlaps tensor blk.0.ffn_down.weight")


# --- vocabulary ---------------------------------------------------------------------------------


def _set_strings(lay, key, items):
    lay.set(key, VT.ARRAY, enc_array(VT.STRING, items))


def test_duplicate_tokens_are_refused(smollm2, tmp_path):
    lay = smollm2.copy()
    tokens = lay.strings(K.LIST)
    tokens[300] = tokens[301]
    _set_strings(lay, K.LIST, tokens)
    refused(lay, tmp_path, "twice (ids 300 and 301)", "aborts")


def test_token_count_must_match_the_embedding(smollm2, tmp_path):
    lay = smollm2.copy()
    _set_strings(lay, K.LIST, lay.strings(K.LIST) + [b"<an-added-token>"])
    types = decode_scalars(lay.kv[lay.index(K.TOKEN_TYPE)][2]) + [1]
    lay.set(K.TOKEN_TYPE, VT.ARRAY, enc_array(VT.INT32, types))
    refused(lay, tmp_path, "llama.vocab_size is 49152 but the vocabulary has 49153 tokens")
    lay.drop("llama.vocab_size")
    refused(lay, tmp_path, "token_embd.weight has shape (576, 49152)", "49153 tokens")


def test_token_types_must_match_the_tokens(smollm2, tmp_path):
    lay = smollm2.copy()
    lay.set(K.TOKEN_TYPE, VT.ARRAY, enc_array(VT.INT32, [1] * 100))
    refused(lay, tmp_path, "100 items for 49152 tokens")


def test_scores_must_match_the_tokens(gemma3, tmp_path):
    lay = gemma3.copy()
    lay.set(K.SCORES, VT.ARRAY, enc_array(VT.FLOAT32, [0.0] * 5))
    refused(lay, tmp_path, "scores has 5 items for 262144 tokens")


def test_unknown_token_type_value(smollm2, tmp_path):
    lay = smollm2.copy()
    types = decode_scalars(lay.kv[lay.index(K.TOKEN_TYPE)][2])
    types[7] = 9
    lay.set(K.TOKEN_TYPE, VT.ARRAY, enc_array(VT.INT32, types))
    refused(lay, tmp_path, "token_type[7] is 9")


def test_byte_token_not_spelled_as_a_byte(gemma3, tmp_path):
    lay = gemma3.copy()
    types = decode_scalars(lay.kv[lay.index(K.TOKEN_TYPE)][2])
    normal = types.index(1)
    types[normal] = int(gguf.TokenType.BYTE)
    lay.set(K.TOKEN_TYPE, VT.ARRAY, enc_array(VT.INT32, types))
    refused(lay, tmp_path, f"token {normal}", "not spelled <0xXX>")


@pytest.mark.parametrize("key", [K.BOS_ID, K.EOS_ID, K.UNK_ID, K.PAD_ID])
def test_special_token_ids_inside_the_vocabulary(smollm2, tmp_path, key):
    lay = smollm2.copy()
    lay.set(key, VT.UINT32, struct.pack("<I", 49152))
    refused(lay, tmp_path, f"{key} is 49152, outside the vocabulary of 49152 tokens")


def test_merges_must_be_pairs(smollm2, tmp_path):
    lay = smollm2.copy()
    merges = lay.strings(K.MERGES)
    merges[10] = b"nospace"
    _set_strings(lay, K.MERGES, merges)
    refused(lay, tmp_path, "merges[10] is 'nospace'")


def test_bpe_without_merges(smollm2, tmp_path):
    lay = smollm2.copy()
    lay.drop(K.MERGES)
    refused(lay, tmp_path, "no tokenizer.ggml.merges")


def test_unknown_pre_tokenizer_lists_the_known_ones(smollm2, tmp_path):
    lay = smollm2.copy()
    lay.set(K.PRE, VT.STRING, enc_str("my-new-bpe"))
    msg = refused(lay, tmp_path, "'my-new-bpe'", "does not know")
    assert "smollm" in msg and "llama-bpe" in msg and "qwen2" in msg


def test_unknown_tokenizer_model(smollm2, tmp_path):
    lay = smollm2.copy()
    lay.set(K.MODEL, VT.STRING, enc_str("sentencepiece"))
    refused(lay, tmp_path, "'sentencepiece'", "known: bert")


def test_no_tokenizer(smollm2, tmp_path):
    lay = smollm2.copy()
    lay.drop(K.MODEL)
    refused(lay, tmp_path, "no tokenizer.ggml.model")


def spm_without_byte_tokens(gemma3):
    """Gemma-3's SentencePiece vocabulary with <0x00>..<0xFF> renamed to ordinary tokens."""
    lay = gemma3.copy()
    tokens = lay.strings(K.LIST)
    types = decode_scalars(lay.kv[lay.index(K.TOKEN_TYPE)][2])
    for i, t in enumerate(tokens):
        if re.fullmatch(rb"<0x[0-9A-F]{2}>", t):
            tokens[i], types[i] = b"<renamed-" + t[3:5] + b">", 1
    _set_strings(lay, K.LIST, tokens)
    lay.set(K.TOKEN_TYPE, VT.ARRAY, enc_array(VT.INT32, types))
    return lay


def test_spm_vocabulary_without_byte_tokens_is_refused(gemma3, tmp_path):
    refused(spm_without_byte_tokens(gemma3), tmp_path, "lacks byte tokens for", "<0x00>", "emoji")


LLAMA_TOKENIZE = textwrap.dedent("""
    import ctypes, sys
    import llama_cpp as L
    L.llama_backend_init()
    p = L.llama_model_default_params(); p.vocab_only = True
    model = L.llama_model_load_from_file(sys.argv[1].encode(), p)
    assert model, "load failed"
    vocab = L.llama_model_get_vocab(model)
    text = sys.argv[2].encode()
    buf = (L.llama_token * 64)()
    n = L.llama_tokenize(vocab, text, len(text), buf, 64, True, False)
    print("tokens", n, flush=True)
""")


@pytest.mark.slow
def test_llama_cpp_dies_on_that_vocabulary_and_not_on_the_original(gemma3, tmp_path):
    """Why the refusal matters: llama.cpp's SPM tokenizer throws std::out_of_range through the C API."""
    rare = "hi \U000f0041"  # a private-use character: no token, so byte fallback
    good = gemma3.copy().write(tmp_path / "good.gguf")
    bad = spm_without_byte_tokens(gemma3).write(tmp_path / "bad.gguf")
    run = lambda path: subprocess.run([sys.executable, "-c", LLAMA_TOKENIZE, str(path), rare],  # noqa: E731
                                      capture_output=True, text=True, timeout=120)  # fmt: skip
    ok = run(good)
    assert ok.returncode == 0 and "tokens" in ok.stdout, ok.stderr[-2000:]
    dead = run(bad)
    assert dead.returncode != 0 and "tokens" not in dead.stdout
    assert "out_of_range" in dead.stderr or dead.returncode < 0, dead.stderr[-2000:]


def test_known_names_match_the_vendored_llama_cpp():
    if not VOCAB_CPP.exists():
        pytest.skip("the vendored llama.cpp sources are not on this machine")
    src = VOCAB_CPP.read_text()
    assert set(names.PRE_TOKENIZERS) == set(re.findall(r'tokenizer_pre == "([^"]+)"', src))
    assert set(names.TOKENIZER_MODELS) == set(re.findall(r'tokenizer_model == "([^"]+)"', src))


# --- the point: gguf's reader on a tiny crafted file ----------------------------------------------

GGUF_READER = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    import gguf
    print("reading", flush=True)
    gguf.GGUFReader(sys.argv[1])
    print("returned", flush=True)
""")


def tiny_hostile_file(path: Path) -> Path:
    """40 bytes: one key, an array of u8 claiming 2**62 items and holding none."""
    path.write_bytes(
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + enc_str("a") + struct.pack("<IIQ", VT.ARRAY, VT.UINT8, 1 << 62)
    )
    return path


@pytest.mark.slow
def test_gguf_reader_hangs_or_blows_up_where_we_refuse_at_once(tmp_path):
    path = tiny_hostile_file(tmp_path / "tiny.gguf")
    with pytest.raises(ModelFormatError, match="declares 4611686018427387904 items"):
        validate_gguf(path)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", GGUF_READER, str(path)], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return  # hung (growing its field list) for 20 s on a 40-byte file
    assert "returned" not in proc.stdout and "MemoryError" in proc.stderr, proc.stderr[-1000:]


# --- ONNX folders -------------------------------------------------------------------------------


def _onnx_model(folder: Path, location: str, offset: int = 0, length: int = 16) -> Path:
    """A one-node ONNX model whose initializer keeps its 16 bytes in `location`."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        w.external_data.add(key=k, value=v)
    node = helper.make_node("Add", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], initializer=[w])  # fmt: skip
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_onnx_folder_with_data_inside_passes(tmp_path):
    from edge.formats.validate import validate_onnx_folder

    (tmp_path / "weights.bin").write_bytes(bytes(16))
    _onnx_model(tmp_path, "weights.bin")
    assert validate_onnx_folder(tmp_path) == [tmp_path / "model.onnx"]


@pytest.mark.parametrize("location,fragment", [
    ("../outside.bin", "leaves the model folder"),
    ("sub/../../outside.bin", "leaves the model folder"),
    ("/etc/passwd", "absolute path"),
    ("C:\\\\Windows\\\\win.ini", "absolute path"),
    ("link.bin", "outside the model folder"),  # a symlink pointing out
    ("missing.bin", "does not exist"),
    ("", "no location"),
])  # fmt: skip
def test_onnx_external_data_leaving_the_folder_is_refused(tmp_path, location, fragment):
    from edge.formats.validate import validate_onnx_folder

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (tmp_path / "outside.bin").write_bytes(bytes(16))
    (model_dir / "link.bin").symlink_to(tmp_path / "outside.bin")
    _onnx_model(model_dir, location)
    with pytest.raises(ModelFormatError) as e:
        validate_onnx_folder(model_dir)
    assert fragment in e.value.message


def test_onnx_external_data_range_past_the_end(tmp_path):
    from edge.formats.validate import validate_onnx_folder

    (tmp_path / "weights.bin").write_bytes(bytes(16))
    _onnx_model(tmp_path, "weights.bin", offset=8, length=16)
    with pytest.raises(ModelFormatError, match="past the end of the 16-byte file"):
        validate_onnx_folder(tmp_path)


def test_onnx_model_symlinked_from_outside_is_refused(tmp_path):
    from edge.formats.validate import validate_onnx_folder

    elsewhere, model_dir = tmp_path / "elsewhere", tmp_path / "model"
    elsewhere.mkdir(), model_dir.mkdir()
    (elsewhere / "weights.bin").write_bytes(bytes(16))
    _onnx_model(elsewhere, "weights.bin")
    (model_dir / "model.onnx").symlink_to(elsewhere / "model.onnx")
    with pytest.raises(ModelFormatError, match="outside the model folder"):
        validate_onnx_folder(model_dir)


def test_validating_gguf_does_not_import_onnx():
    """onnx is imported inside the ONNX folder check, so a GGUF-only device never loads it. The import
    contracts see that lazy import as an import; only a run shows it is deferred."""
    code = "import sys, edge.formats.validate; assert 'onnx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
