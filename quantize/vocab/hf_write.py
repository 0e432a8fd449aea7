r"""Vocab -> Hugging Face tokenizer files that tokenize exactly as llama.cpp does on the GGUF.

  * "gpt2" vocabularies: BPE over ByteLevel, with the pre-tokenizer llama.cpp uses for the
    vocabulary's `pre` (pretokenizers.TABLE) and llama.cpp's ignore_merges for it.
  * "llama" (SentencePiece) vocabularies: BPE with byte fallback whose merges are every
    (left, right) split of every token, ranked by the score of the joined token. llama.cpp's SPM
    tokenizer merges the adjacent pair whose joined text has the best score; HF's BPE merges the
    pair with the lowest rank; ranking by score makes both take the same pair at every step.
    llama.cpp prepends a space to every text fragment (after each special token too) when
    add_space_prefix is set: a Prepend normalizer does the same, where Metaspace(prepend_scheme=
    "first") would not.
  * "bert" (WordPiece) and "t5" (Unigram) vocabularies: the tokenizer.json those models ship
    (wordpiece.py, unigram.py), which tokenizes as llama.cpp's WPM and UGM tokenizers do.
tokenizer_config.json names PreTrainedTokenizerFast so transformers uses tokenizer.json as is.

Why transformers' own GGUF loading (transformers/integrations/ggml.py, 4.57) differs from llama.cpp:
  * SentencePiece (Gemma-3): it builds a Unigram model from the scores, i.e. a Viterbi search for
    the best total score, where llama.cpp greedily merges the best-scoring adjacent pair
    ("Café" -> "Ca|fé" vs llama.cpp's "Caf|é").
  * Byte-level BPE (SmolLM2): it ignores tokenizer.ggml.pre and uses ByteLevel's GPT-2 regex
    (" ?\p{N}+"), so " ٣٤" stays one pre-token and the space merges with the digit; llama.cpp's
    "smollm" isolates every \p{N} first.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge.fsio import write_atomic

from . import unigram, wordpiece
from .model import BPE, SPM, UGM, WPM, TokenType, Vocab
from .pretokenizers import BY_PRE, hf_pre_tokenizer, ignore_merges

_ADDED_TYPES = (TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN)


def write_hf_tokenizer(vocab: Vocab, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tj = tokenizer_json(vocab)
    _write_json(out_dir / "tokenizer.json", tj)
    _write_json(out_dir / "tokenizer_config.json", _config(vocab))
    _write_json(out_dir / "special_tokens_map.json", _special_map(vocab))


def tokenizer_json(vocab: Vocab) -> dict:
    if vocab.model == WPM:
        return _tokenizer_json(
            vocab,
            wordpiece.hf_model(vocab),
            normalizer=wordpiece.hf_normalizer(vocab),
            pre_tokenizer={"type": "BertPreTokenizer"},
            post_processor=wordpiece.hf_post_processor(vocab),
            decoder={"type": "WordPiece", "prefix": wordpiece.CONTINUATION, "cleanup": True},
        )
    if vocab.model == UGM:
        return _tokenizer_json(
            vocab,
            unigram.hf_model(vocab),
            normalizer=unigram.hf_normalizer(vocab),
            pre_tokenizer=unigram.hf_pre_tokenizer(vocab),
            post_processor=_post_processor(vocab),
            decoder=unigram.hf_decoder(vocab),
        )
    model = _bpe_model(vocab) if vocab.model == BPE else _spm_model(vocab)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added_tokens(vocab),
        "normalizer": _spm_normalizer(vocab) if vocab.model == SPM else None,
        "pre_tokenizer": hf_pre_tokenizer(vocab.pre) if vocab.model == BPE else None,
        "post_processor": _post_processor(vocab),
        "decoder": _decoder(vocab),
        "model": model,
    }


def _tokenizer_json(vocab: Vocab, model: dict, **parts) -> dict:
    added = _added_tokens(vocab)
    if vocab.model == WPM:  # the HF texts of the added tokens, not llama.cpp's phantom-space form
        added = [{**a, "content": wordpiece.hf_token(vocab, a["id"])} for a in added]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, **parts, "model": model}


def _vocab_map(vocab: Vocab) -> dict[str, int]:
    out: dict[str, int] = {}
    for i, t in enumerate(vocab.tokens):
        out.setdefault(t, i)  # a duplicated text keeps its first id, as llama.cpp's token_to_id
    return out


def _added_tokens(vocab: Vocab) -> list[dict]:
    rstrip = _rstrip_texts(vocab)
    return [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": t in rstrip,
            "normalized": False,
            "special": typ != TokenType.USER_DEFINED,
        }
        for i, (t, typ) in enumerate(zip(vocab.tokens, vocab.token_types))
        if typ in _ADDED_TYPES
    ]


def _rstrip_texts(vocab: Vocab) -> set[str]:
    """Tokens llama.cpp strips the whitespace after, by model name (llama-vocab.cpp, Phi-3 only)."""
    name = (vocab.model_name or "").lower()
    if "phi-3" not in name and "phi3" not in name:
        return set()
    out = {t for t, typ in zip(vocab.tokens, vocab.token_types) if typ in _ADDED_TYPES}
    return (out | {"</s>"}) - {"<unk>", "<s>", "<|endoftext|>"}


def _bpe_model(vocab: Vocab) -> dict:
    return {
        "type": "BPE",
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": False,
        "byte_fallback": False,
        "ignore_merges": ignore_merges(vocab.pre),
        "vocab": _vocab_map(vocab),
        "merges": [m.split(" ", 1) for m in vocab.merges],
    }


def _spm_model(vocab: Vocab) -> dict:
    return {
        "type": "BPE",
        "dropout": None,
        "unk_token": vocab.token("unk"),
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": True,
        "byte_fallback": True,
        "ignore_merges": False,
        "vocab": _vocab_map(vocab),
        "merges": spm_merges(vocab),
    }


def spm_merges(vocab: Vocab) -> list[list[str]]:
    """Every split of every token into two tokens, best score (then lowest id) first."""
    index = _vocab_map(vocab)
    known = set(index)
    skip = {int(TokenType.BYTE), int(TokenType.UNUSED), int(TokenType.CONTROL), int(TokenType.USER_DEFINED)}
    ids = np.fromiter(index.values(), dtype=np.int64, count=len(index))  # (n_unique,)
    scores = np.asarray(vocab.scores, dtype=np.float64)[ids]  # (n_unique,)
    order = ids[np.lexsort((ids, -scores))]  # best score first, ties by id
    tokens, types = vocab.tokens, vocab.token_types
    out: list[list[str]] = []
    for i in order.tolist():
        t = tokens[i]
        if len(t) < 2 or types[i] in skip:
            continue
        out.extend([t[:k], t[k:]] for k in range(1, len(t)) if t[:k] in known and t[k:] in known)
    return out


def _spm_normalizer(vocab: Vocab) -> dict:
    steps = [{"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]
    if vocab.add_space_prefix:
        steps.insert(0, {"type": "Prepend", "prepend": "\u2581"})
    return {"type": "Sequence", "normalizers": steps}


def _decoder(vocab: Vocab) -> dict:
    if vocab.model == BPE:
        return {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    steps = [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]
    if vocab.add_space_prefix:
        steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {"type": "Sequence", "decoders": steps}


def _post_processor(vocab: Vocab) -> dict:
    def special(role):
        return {"SpecialToken": {"id": vocab.token(role), "type_id": 0}}

    single: list[dict] = [{"Sequence": {"id": "A", "type_id": 0}}]
    pair: list[dict] = [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}]
    used = []
    if vocab.add_bos and vocab.token("bos") is not None:
        single.insert(0, special("bos"))
        pair.insert(0, special("bos"))
        used.append("bos")
    if vocab.add_eos and vocab.token("eos") is not None:
        single.append(special("eos"))
        pair.append(special("eos"))
        used.append("eos")
    tokens = {
        vocab.token(r): {"id": vocab.token(r), "ids": [vocab.special_ids[r]], "tokens": [vocab.token(r)]} for r in used
    }
    return {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": tokens}


def _config(vocab: Vocab) -> dict:
    row = BY_PRE.get(vocab.pre or "default")
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": vocab.add_bos,
        "add_eos_token": vocab.add_eos,
        "clean_up_tokenization_spaces": bool(row.clean_spaces) if vocab.model == BPE and row else False,
        "model_max_length": 1 << 30,
    }
    cfg.update(_special_map(vocab))
    if vocab.chat_template:
        cfg["chat_template"] = vocab.chat_template
    return cfg


def _special_map(vocab: Vocab) -> dict:
    if vocab.model == WPM:  # BERT names its bos/eos [CLS] and [SEP]
        bert = {"cls": "bos", "sep": "sep", "unk": "unk", "pad": "pad", "mask": "mask"}
        return {f"{k}_token": vocab.token(r) for k, r in bert.items() if vocab.token(r) is not None}
    roles = ("bos", "eos", "unk", "pad", "mask") if vocab.model == UGM else ("bos", "eos", "unk", "pad")
    return {f"{r}_token": vocab.token(r) for r in roles if vocab.token(r) is not None}


def _write_json(path: Path, obj: dict) -> None:
    indent = 1 if len(obj) < 20 and path.name != "tokenizer.json" else None
    write_atomic(path, json.dumps(obj, ensure_ascii=False, indent=indent))
