"""Tokenizer conversion in both directions, checked against llama.cpp's own tokenizer.

For every fixture family: HF folder -> load_vocab -> vocab-only GGUF, then llama.cpp's tokens
must equal the HF tokenizer's (tokenizers.Tokenizer.from_file) on a mixed-script string set,
with and without special tokens. And back: vocab_from_gguf -> write_hf_tokenizer must tokenize
exactly as llama.cpp does on that GGUF.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import pytest

from edge.errors import ModelFormatError
from quantize.vocab import (
    BPE,
    SPM,
    TokenType,
    Vocab,
    add_vocab_to_gguf,
    check_vocab,
    load_vocab,
    vocab_from_gguf,
    write_hf_tokenizer,
)
from tests.support.tokenizers import (
    KINDS,
    LLAMA3_TEMPLATE,
    MIXED_STRINGS,
    LlamaCppVocab,
    assert_same_tokens,
    same_types,
    write_tokenizer,
    write_vocab_gguf,
)

tokenizers = pytest.importorskip("tokenizers")

# Prompts as each family's chat template renders them: special tokens inside text.
CHAT_STRINGS = {
    "llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "llama2": "<s>[INST] <<SYS>>\nBe brief\n<</SYS>>\n\nHi there [/INST] Hello </s>",
    "phi3": "<|system|>\nBe brief<|end|>\n<|user|>\nHi there<|end|>\n<|assistant|>\n",
    "gemma": "<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "gemma3-json": "<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "bert": "[CLS] Hi there, [MASK] world![SEP]Second part[SEP]",
    "xlmr": "<s> Hi there, <mask> world!</s></s>Zweiter Teil</s>",
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tok")
    return {k: (root / k, write_tokenizer(root / k, k))[0] for k in KINDS}


def _gguf(tmp_path: Path, vocab: Vocab, kind: str) -> Path:
    # llama.cpp gives Phi-3's special tokens rstrip by model name (llama-vocab.cpp), as HF's files do.
    return write_vocab_gguf(tmp_path / f"{kind}.gguf", vocab, name="phi3-tiny" if kind == "phi3" else kind)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_hf_to_gguf_tokenizes_like_hf(folders, tmp_path, kind):
    vocab = load_vocab(folders[kind])
    hf = tokenizers.Tokenizer.from_file(str(folders[kind] / "tokenizer.json"))
    with LlamaCppVocab(_gguf(tmp_path, vocab, kind)) as lc:
        assert_same_tokens(hf, lc, strings(kind))


def strings(kind: str) -> tuple[str, ...]:
    """The mixed texts, less the one case llama.cpp's WordPiece gets wrong: accent stripping decomposes
    Hangul syllables into jamo differently from HF's (documented in quantize/vocab/wordpiece.py)."""
    mixed = tuple(s for s in MIXED_STRINGS if kind != "bert" or not any("\uac00" <= c <= "\ud7a3" for c in s))
    return mixed + (CHAT_STRINGS[kind],)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_gguf_to_hf_tokenizes_like_llama_cpp(folders, tmp_path, kind):
    path = _gguf(tmp_path, load_vocab(folders[kind]), kind)
    back = vocab_from_gguf(path)
    write_hf_tokenizer(back, tmp_path / "hf")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
    with LlamaCppVocab(path) as lc:
        assert_same_tokens(hf, lc, strings(kind))
    cfg = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert cfg.get("chat_template") == back.chat_template
    if back.model == "bert":  # BERT's roles are called [CLS] and [SEP]
        assert cfg["cls_token"] == back.token("bos") and cfg["sep_token"] == back.token("sep")
    else:
        assert cfg["bos_token"] == back.token("bos") and cfg["eos_token"] == back.token("eos")
    # ...and loading that folder again gives the same vocabulary as the GGUF's.
    again = load_vocab(tmp_path / "hf")
    assert (again.model, again.pre, again.tokens) == (back.model, back.pre, back.tokens)
    assert same_types(again.token_types, back.token_types)
    assert again.special_ids.items() >= {k: back.special_ids[k] for k in ("bos", "eos")}.items()


@pytest.mark.slow
def test_llama3_metadata(folders):
    v = load_vocab(folders["llama3"])
    ids = {t: i for i, t in enumerate(v.tokens)}
    assert (v.model, v.pre) == (BPE, "llama-bpe")
    assert v.special_ids["bos"] == ids["<|begin_of_text|>"] and v.special_ids["eos"] == ids["<|eot_id|>"]
    assert v.special_ids["eom"] == ids["<|eom_id|>"]
    assert v.add_bos and not v.add_eos  # from the post-processor: tokenizer_config.json does not say
    assert v.token_types[ids["<|start_header_id|>"]] == TokenType.CONTROL
    assert v.token_types[ids["Ġthe"]] == TokenType.NORMAL
    assert v.merges and all(len(m.split(" ")) == 2 for m in v.merges)
    assert v.chat_template == LLAMA3_TEMPLATE


@pytest.mark.slow
def test_sentencepiece_metadata(folders):
    v = load_vocab(folders["llama2"])
    assert (v.model, v.add_space_prefix, v.add_bos) == (SPM, True, True)
    assert sum(t == TokenType.BYTE for t in v.token_types) == 256
    assert v.token_types[0] == TokenType.UNKNOWN and v.token_types[1] == TokenType.CONTROL
    assert len(set(v.scores)) > len(v) // 2  # real SentencePiece scores, not a constant
    g = load_vocab(folders["gemma"])
    assert g.add_space_prefix is False and g.special_ids["eot"] == g.tokens.index("<end_of_turn>")
    p = load_vocab(folders["phi3"])
    assert p.token("eos") == "<|endoftext|>" and p.token("eot") == "<|end|>" and not p.add_bos
    assert p.token_types[p.tokens.index("<|user|>")] == TokenType.CONTROL


@pytest.mark.slow
def test_sentencepiece_from_tokenizer_json_only(folders):
    """Gemma-3 style: no tokenizer.model; llama.cpp's converter stops with 'BPE pre-tokenizer was not recognized'."""
    assert not (folders["gemma3-json"] / "tokenizer.model").exists()
    v = load_vocab(folders["gemma3-json"])
    assert v.model == SPM and not v.merges
    assert sum(t == TokenType.BYTE for t in v.token_types) == 256
    # merged tokens are ranked like the merges: the first merge's result scores best
    tj = json.loads((folders["gemma3-json"] / "tokenizer.json").read_text())
    first = "".join(tj["model"]["merges"][0])
    assert v.scores[v.tokens.index(first)] == max(v.scores)


@pytest.mark.slow
def test_kind_comes_from_tokenizer_json_not_class_name(folders, tmp_path):
    """The SmolLM2 trap: a byte-level tokenizer.json under a LlamaTokenizer class stays byte-level BPE."""
    d = tmp_path / "x"
    shutil.copytree(folders["llama3"], d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "LlamaTokenizer"
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert load_vocab(d).model == BPE


def test_vocab_size_padding(folders):
    v = load_vocab(folders["llama3"], vocab_size=1030)
    assert len(v) == 1030 and v.tokens[-1] == "[PAD1029]" and v.token_types[-1] == TokenType.UNUSED
    with pytest.raises(ModelFormatError, match="embedding"):
        load_vocab(folders["llama3"], vocab_size=10)


def test_refuses_spm_without_byte_tokens(folders, tmp_path):
    """llama.cpp would abort with std::out_of_range on the first emoji: refused at conversion."""
    d = tmp_path / "nobytes"
    shutil.copytree(folders["gemma3-json"], d)
    tj = json.loads((d / "tokenizer.json").read_text())
    tj["model"]["vocab"] = {(f"byte{t}" if t.startswith("<0x") else t): i for t, i in tj["model"]["vocab"].items()}
    (d / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(ModelFormatError, match="byte_to_token"):
        load_vocab(d)
    w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "llama")
    bad = Vocab(model=SPM, pre="default", tokens=["<unk>", "a"], scores=[0.0, 0.0], token_types=[2, 1])
    with pytest.raises(ModelFormatError):
        add_vocab_to_gguf(w, bad)


def test_refuses_bad_inputs(folders, tmp_path):
    with pytest.raises(ModelFormatError, match="neither tokenizer.json nor tokenizer.model"):
        load_vocab(tmp_path)
    d = tmp_path / "unknown-pre"
    shutil.copytree(folders["llama3"], d)
    tj = json.loads((d / "tokenizer.json").read_text())
    tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\w+|\s+"
    (d / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(ModelFormatError, match="llama-bpe"):
        load_vocab(d)
    tj["model"]["merges"] = []
    with pytest.raises(ModelFormatError):
        check_vocab(Vocab(model=BPE, pre="gpt-2", tokens=["a"], scores=[0.0], token_types=[1]))
    (d / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        load_vocab(d)


def test_truncated_gguf_is_refused(folders, tmp_path):
    path = write_vocab_gguf(tmp_path / "v.gguf", load_vocab(folders["llama3"]))
    data = path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="past the end"):
        vocab_from_gguf(tmp_path / "cut.gguf")
    # edge.formats.gguf's bounded reader and gguf's own reader see the same vocabulary
    a, fields = vocab_from_gguf(path), gguf.GGUFReader(path).fields
    assert a.tokens == fields[gguf.Keys.Tokenizer.LIST].contents()
    assert a.merges == fields[gguf.Keys.Tokenizer.MERGES].contents()
    assert a.token_types == fields[gguf.Keys.Tokenizer.TOKEN_TYPE].contents()
