"""The two bundled real models: tokenizers exported from their GGUF files tokenize exactly as
llama.cpp does on those files, and survive the trip back into a GGUF; unpack -> convert gives
the same tensors, the same tokens and (SmolLM2) the same greedy text as transformers.

transformers' own GGUF loading gets these tokenizers wrong (Gemma-3 built as a Unigram model:
"Café" -> "Ca|fé" where llama.cpp's score-ordered merges give "Caf|é"; SmolLM2 built with HF's
Digits pre-tokenizer, which isolates ASCII digits only, so " ٣" is merged with its space);
these tests pin the behaviour we promise instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quantize.vocab import load_vocab, vocab_from_gguf, write_hf_tokenizer
from tests.support.tokenizers import MIXED_STRINGS, LlamaCppVocab, assert_same_tokens, same_types, write_vocab_gguf

tokenizers = pytest.importorskip("tokenizers")

REAL_STRINGS = MIXED_STRINGS + (
    "Café",
    " ٣٤ and ۵۶ then 7890",
    "Ca fé naïve",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",  # SmolLM2's chat markup
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",  # Gemma-3's chat markup
)


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def bundled(request) -> Path:
    return request.getfixturevalue(f"{request.param}_path")


@pytest.mark.slow
def test_exported_tokenizer_matches_llama_cpp_and_round_trips(bundled, tmp_path):
    vocab = vocab_from_gguf(bundled)
    write_hf_tokenizer(vocab, tmp_path / "hf")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
    with LlamaCppVocab(bundled) as lc:
        assert_same_tokens(hf, lc, REAL_STRINGS)
    again = load_vocab(tmp_path / "hf")
    assert (again.model, again.pre, again.tokens) == (vocab.model, vocab.pre, vocab.tokens)
    assert same_types(again.token_types, vocab.token_types)
    with LlamaCppVocab(write_vocab_gguf(tmp_path / "again.gguf", again)) as lc:
        assert_same_tokens(hf, lc, REAL_STRINGS)


def test_cafe_and_arabic_digits_pinned(smollm2_path, gemma3_path, tmp_path):
    """The two splits transformers' GGUF loader gets wrong, checked against llama.cpp directly."""
    for path, text, want in ((gemma3_path, "Café", ["Caf", "é"]), (smollm2_path, " ٣٤", ["Ġ", "Ù", "£", "Ù", "¤"])):
        vocab = vocab_from_gguf(path)
        with LlamaCppVocab(path) as lc:
            assert [vocab.tokens[i] for i in lc.tokenize(text)] == want


# ---------------------------------------------------------------- unpack -> convert (convert-core)
def _safetensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out: dict[str, np.ndarray] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def unpacked(bundled, module_tmp) -> tuple[Path, Path]:
    unpack = pytest.importorskip("quantize.unpack").unpack
    out = module_tmp("unpacked") / bundled.stem
    unpack(bundled, out, quiet=True)
    return bundled, out


@pytest.mark.slow
def test_unpack_convert_f32_same_tensors_and_tokens(unpacked, tmp_path):
    from quantize.convert import convert
    from quantize.unpack import unpack

    source, folder = unpacked
    (f32,) = convert(folder, ["f32"], tmp_path / "out", quiet=True)
    unpack(f32.path, tmp_path / "again", quiet=True)
    a, b = _safetensors(folder), _safetensors(tmp_path / "again")
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    hf = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    with LlamaCppVocab(source) as orig, LlamaCppVocab(f32.path) as ours:
        for s in REAL_STRINGS:
            assert ours.tokenize(s) == orig.tokenize(s) == hf.encode(s, add_special_tokens=False).ids, s


@pytest.mark.slow
def test_f16_greedy_agrees_with_transformers(unpacked, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import llama_cpp

    from quantize.convert import convert

    source, folder = unpacked
    (f16,) = convert(folder, ["f16"], tmp_path / "out", quiet=True)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    prompt = "The capital of France is"
    ids = tok(prompt)["input_ids"]
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
    with torch.no_grad():
        want = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids) :].tolist()
    llm = llama_cpp.Llama(model_path=str(f16.path), n_ctx=128, n_threads=2, verbose=False)
    assert llm.tokenize(prompt.encode(), add_bos=True, special=True) == ids
    got = []
    for t in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
        got.append(t)
        if len(got) == len(want):  # 32, or fewer when transformers stopped at end-of-sequence
            break
    assert got == want, (tok.decode(got), tok.decode(want))
    assert len(want) == 32 or want[-1] in (model.generation_config.eos_token_id, tok.eos_token_id)
