"""The Vocab record shared by every reader and writer in this package.

One Vocab holds what llama.cpp needs to tokenize exactly like the source tokenizer:
tokens in id order, their scores and types, BPE merges, special ids and flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gguf

TokenType = gguf.TokenType  # NORMAL=1 UNKNOWN=2 CONTROL=3 USER_DEFINED=4 UNUSED=5 BYTE=6

# llama.cpp's "llama" tokenizer model is SentencePiece; "gpt2" is byte-level BPE; "bert" is WordPiece
# (its WPM tokenizer); "t5" is a Unigram model (its UGM tokenizer, SentencePiece's Viterbi search).
SPM = "llama"
BPE = "gpt2"
WPM = "bert"
UGM = "t5"

# Special-token roles written as tokenizer.ggml.<role>_token_id.
SPECIAL_ROLES = ("bos", "eos", "unk", "sep", "pad", "mask", "eot", "eom")


@dataclass
class Vocab:
    model: str  # tokenizer.ggml.model: "gpt2" | "llama" | "bert" | "t5" (see above)
    pre: str | None  # tokenizer.ggml.pre, e.g. "llama-bpe", "smollm", "default"
    tokens: list[str]
    scores: list[float]
    token_types: list[int]  # gguf.TokenType values
    merges: list[str] = field(default_factory=list)  # "a b" pairs (gpt2 only)
    special_ids: dict[str, int] = field(default_factory=dict)
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    chat_template: str | None = None
    # general.name of the GGUF it came from: llama.cpp sets some token attributes by model name
    # (Phi-3's special tokens strip the whitespace after them), and the HF export must do the same.
    model_name: str | None = None
    add_sep: bool | None = None  # WordPiece: llama.cpp's converter writes it (False); WPM ignores it
    # WordPiece's BertNormalizer: llama.cpp lowercases (and strips accents) unless told otherwise
    lowercase: bool | None = None
    strip_accents: bool | None = None  # None: as lowercase (BertNormalizer's and llama.cpp's default)
    # Unigram's normalizer: SentencePiece's compiled character map (tokenizer.ggml.precompiled_charsmap)
    precompiled_charsmap: bytes | None = None
    remove_extra_whitespaces: bool | None = None

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if len(self.scores) != n or len(self.token_types) != n:
            raise ValueError(f"tokens/scores/types lengths differ: {n}, {len(self.scores)}, {len(self.token_types)}")

    def __len__(self) -> int:
        return len(self.tokens)

    def token(self, role: str) -> str | None:
        """The text of a special token (e.g. "bos"), or None when the role is not set."""
        i = self.special_ids.get(role)
        return None if i is None else self.tokens[i]

    def pad_to(self, size: int) -> None:
        """Append unused "[PAD{i}]" tokens so the vocabulary matches a larger embedding."""
        for i in range(len(self.tokens), size):
            self.tokens.append(f"[PAD{i}]")
            self.scores.append(-1000.0)
            self.token_types.append(int(TokenType.UNUSED))
