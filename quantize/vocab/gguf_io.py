"""Vocab <-> GGUF metadata (tokenizer.ggml.*)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from edge.errors import ModelFormatError

from .model import BPE, SPECIAL_ROLES, SPM, Vocab
from .safety import check_vocab

K = gguf.Keys.Tokenizer
_ROLE_KEYS = {
    "bos": K.BOS_ID, "eos": K.EOS_ID, "unk": K.UNK_ID, "sep": K.SEP_ID, "pad": K.PAD_ID,
    "mask": K.MASK_ID, "eot": K.EOT_ID, "eom": K.EOM_ID,
}
assert set(_ROLE_KEYS) == set(SPECIAL_ROLES)


def add_vocab_to_gguf(writer: gguf.GGUFWriter, vocab: Vocab) -> None:
    """Write tokenizer.ggml.* keys; refuses a vocabulary llama.cpp could abort on."""
    check_vocab(vocab)
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.model == SPM:
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
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def vocab_from_gguf(reader_or_path: gguf.GGUFReader | Path | str) -> Vocab:
    """Read the vocabulary of a GGUF file (or an open GGUFReader)."""
    reader = reader_or_path if isinstance(reader_or_path, gguf.GGUFReader) else gguf.GGUFReader(reader_or_path, "r")
    f = reader.fields
    model = _scalar(f, K.MODEL)
    if model not in (SPM, BPE):
        raise ModelFormatError(f"GGUF tokenizer model {model!r} is not supported (supported: {SPM!r}, {BPE!r})")
    tokens = _strings(f, K.LIST)
    n = len(tokens)
    scores = _array(f, K.SCORES, np.float32, n, 0.0)
    types = _array(f, K.TOKEN_TYPE, np.int32, n, int(gguf.TokenType.NORMAL))
    special = {r: int(_scalar(f, k)) for r, k in _ROLE_KEYS.items() if k in f}
    if model == SPM:  # llama.cpp's defaults for SentencePiece when the keys are absent
        for role, default in (("bos", 1), ("eos", 2), ("unk", 0)):
            special.setdefault(role, default)
    return Vocab(
        model=model,
        pre=_scalar(f, K.PRE) if K.PRE in f else None,
        tokens=tokens,
        scores=scores.tolist(),
        token_types=types.tolist(),
        merges=_strings(f, K.MERGES) if K.MERGES in f else [],
        special_ids=special,
        add_bos=bool(_scalar(f, K.ADD_BOS)) if K.ADD_BOS in f else model == SPM,
        add_eos=bool(_scalar(f, K.ADD_EOS)) if K.ADD_EOS in f else False,
        add_space_prefix=bool(_scalar(f, K.ADD_PREFIX)) if K.ADD_PREFIX in f else (True if model == SPM else None),
        chat_template=_scalar(f, K.CHAT_TEMPLATE) if K.CHAT_TEMPLATE in f else None,
    )


def _scalar(fields, key):
    if key not in fields:
        raise ModelFormatError(f"GGUF file has no {key}: it carries no tokenizer")
    return fields[key].contents()


def _strings(fields, key) -> list[str]:
    fld = fields[key]
    # Fast path: decode each string part directly (the Gemma-3 vocabulary has 262144 entries).
    return [bytes(fld.parts[i]).decode("utf-8", errors="surrogateescape") for i in fld.data]


def _array(fields, key, dtype, n, default) -> np.ndarray:
    if key not in fields:
        return np.full(n, default, dtype=dtype)
    fld = fields[key]
    out = np.concatenate([fld.parts[i] for i in fld.data]).astype(dtype) if fld.data else np.empty(0, dtype)
    if len(out) != n:
        raise ModelFormatError(f"GGUF {key} has {len(out)} entries for {n} tokens")
    return out  # (n_vocab,)
