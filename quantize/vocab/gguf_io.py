"""Vocab <-> GGUF metadata (tokenizer.ggml.*)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from edge.errors import ModelFormatError
from edge.formats.gguf import open_gguf

from .model import BPE, SPECIAL_ROLES, SPM, UGM, WPM, Vocab
from .safety import check_vocab

K = gguf.Keys.Tokenizer
_ROLE_KEYS = {
    "bos": K.BOS_ID,
    "eos": K.EOS_ID,
    "unk": K.UNK_ID,
    "sep": K.SEP_ID,
    "pad": K.PAD_ID,
    "mask": K.MASK_ID,
    "eot": K.EOT_ID,
    "eom": K.EOM_ID,
}
assert set(_ROLE_KEYS) == set(SPECIAL_ROLES)
# BertNormalizer options llama.cpp reads (llama-arch.cpp); gguf-py 0.19 has no constants for them
NORMALIZER_LOWERCASE = "tokenizer.ggml.normalizer.lowercase"
NORMALIZER_STRIP_ACCENTS = "tokenizer.ggml.normalizer.strip_accents"


def add_vocab_to_gguf(writer: gguf.GGUFWriter, vocab: Vocab) -> None:
    """Write tokenizer.ggml.* keys; refuses a vocabulary llama.cpp could abort on."""
    check_vocab(vocab)
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.model in (SPM, UGM):
        writer.add_token_scores([float(s) for s in vocab.scores])  # (n_vocab,)
    writer.add_token_types([int(t) for t in vocab.token_types])  # (n_vocab,)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for role, i in vocab.special_ids.items():
        writer.add_uint32(_ROLE_KEYS[role], i)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.add_sep is not None:
        writer.add_add_sep_token(vocab.add_sep)
    if vocab.lowercase is not None:
        writer.add_bool(NORMALIZER_LOWERCASE, vocab.lowercase)
    if vocab.strip_accents is not None:
        writer.add_bool(NORMALIZER_STRIP_ACCENTS, vocab.strip_accents)
    if vocab.remove_extra_whitespaces is not None:
        writer.add_remove_extra_whitespaces(vocab.remove_extra_whitespaces)
    if vocab.precompiled_charsmap:
        writer.add_array(K.PRECOMPILED_CHARSMAP, vocab.precompiled_charsmap)  # bytes: a UINT8 array
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def vocab_from_gguf(path: Path | str) -> Vocab:
    """Read the vocabulary of a GGUF file through edge.formats.gguf's bounded reader."""
    with open_gguf(Path(path), tensors=False) as g:
        f = {k: g.value(k) for k in g.meta.kv if k.startswith("tokenizer.") or k == gguf.Keys.General.NAME}
    model = _get(f, K.MODEL)
    if model not in (SPM, BPE, WPM, UGM):
        raise ModelFormatError(
            f"GGUF tokenizer model {model!r} is not supported (supported: {SPM!r}, {BPE!r}, {WPM!r}, {UGM!r})"
        )
    tokens = list(_get(f, K.LIST))
    n = len(tokens)
    scores = np.asarray(f.get(K.SCORES, np.zeros(n)), dtype=np.float32)  # (n_vocab,)
    types = np.asarray(f.get(K.TOKEN_TYPE, np.full(n, int(gguf.TokenType.NORMAL))), dtype=np.int32)  # (n_vocab,)
    if len(scores) != n or len(types) != n:
        raise ModelFormatError(f"GGUF vocabulary has {n} tokens but {len(scores)} scores and {len(types)} types")
    special = {r: int(f[k]) for r, k in _ROLE_KEYS.items() if k in f}
    if model == SPM:  # llama.cpp's defaults for SentencePiece when the keys are absent
        for role, default in (("bos", 1), ("eos", 2), ("unk", 0)):
            special.setdefault(role, default)
    return Vocab(
        model=model,
        pre=f.get(K.PRE),
        tokens=tokens,
        scores=scores.tolist(),
        token_types=types.tolist(),
        merges=list(f.get(K.MERGES, [])),
        special_ids={r: i for r, i in special.items() if 0 <= i < n},
        add_bos=bool(f.get(K.ADD_BOS, model == SPM)),
        add_eos=bool(f.get(K.ADD_EOS, False)),
        add_space_prefix=bool(f[K.ADD_PREFIX]) if K.ADD_PREFIX in f else (True if model == SPM else None),
        chat_template=f.get(K.CHAT_TEMPLATE),
        model_name=f.get(gguf.Keys.General.NAME),
        lowercase=bool(f[NORMALIZER_LOWERCASE]) if NORMALIZER_LOWERCASE in f else None,
        strip_accents=bool(f[NORMALIZER_STRIP_ACCENTS]) if NORMALIZER_STRIP_ACCENTS in f else None,
        remove_extra_whitespaces=bool(f[K.REMOVE_EXTRA_WS]) if K.REMOVE_EXTRA_WS in f else None,
        precompiled_charsmap=bytes(np.asarray(f[K.PRECOMPILED_CHARSMAP], dtype=np.uint8))
        if K.PRECOMPILED_CHARSMAP in f
        else None,
    )


def _get(f: dict, key: str):
    if key not in f:
        raise ModelFormatError(f"GGUF file has no {key}: it carries no tokenizer")
    return f[key]
