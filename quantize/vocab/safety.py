"""Refuse vocabularies on which llama.cpp would abort or silently mis-tokenize.

llama.cpp's SentencePiece tokenizer falls back to "<0xXX>" byte tokens for any character it
cannot build from the vocabulary (llama_vocab::byte_to_token); when a byte token is missing it
throws std::out_of_range and the whole process dies on the first emoji. BPE vocabularies
without merges fail to load. Both are caught here, at conversion time.
"""

from __future__ import annotations

from edge.errors import ModelFormatError

from .model import BPE, SPM, UGM, WPM, Vocab

BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))


def check_vocab(vocab: Vocab) -> None:
    """Raise ModelFormatError when llama.cpp could abort on this vocabulary."""
    if not vocab.tokens:
        raise ModelFormatError("the tokenizer has no tokens; check tokenizer.json / tokenizer.model")
    if vocab.model == SPM:
        _check_spm_bytes(vocab)
    elif vocab.model == BPE:
        if not vocab.merges:
            raise ModelFormatError(
                "byte-level BPE tokenizer without merges: llama.cpp refuses to load it. "
                "Use the tokenizer.json shipped with the model (it has model.merges)."
            )
    elif vocab.model == WPM:
        for role in ("bos", "sep", "unk"):  # llama.cpp asserts [CLS]/[SEP] when adding them; [UNK] per OOV word
            if role not in vocab.special_ids:
                raise ModelFormatError(
                    f"WordPiece tokenizer has no {role} token ([CLS]/[SEP]/[UNK]); llama.cpp needs it"
                )
    elif vocab.model == UGM:
        if "unk" not in vocab.special_ids:
            raise ModelFormatError("Unigram tokenizer has no unk_id; llama.cpp needs <unk> for uncovered characters")
    else:
        raise ModelFormatError(
            f"unsupported tokenizer model {vocab.model!r} (supported: {SPM!r}, {BPE!r}, {WPM!r}, {UGM!r})"
        )
    n = len(vocab.tokens)
    for role, i in vocab.special_ids.items():
        if not 0 <= i < n:
            raise ModelFormatError(f"special token {role} id {i} is outside the vocabulary (size {n})")


def _check_spm_bytes(vocab: Vocab) -> None:
    present = set(vocab.tokens)
    missing = [t for b, t in enumerate(BYTE_TOKENS) if t not in present and not (b < 128 and chr(b) in present)]
    if missing:
        raise ModelFormatError(
            f"SentencePiece vocabulary lacks {len(missing)} byte-fallback tokens (e.g. {missing[0]}): "
            "llama.cpp aborts (std::out_of_range in byte_to_token) on the first character it cannot "
            "spell, such as an emoji. If this tokenizer is byte-level BPE, its tokenizer.json must say so "
            "(ByteLevel pre-tokenizer/decoder and model.merges); otherwise retrain with byte_fallback."
        )
