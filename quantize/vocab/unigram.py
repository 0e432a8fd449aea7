"""Unigram tokenizer.json (XLM-RoBERTa, T5, multilingual-e5, bge-m3) <-> llama.cpp's "t5" vocabulary.

llama.cpp's UGM tokenizer is SentencePiece's: normalize with the compiled character map
(tokenizer.ggml.precompiled_charsmap, the bytes of tokenizer.json's Precompiled normalizer), turn
spaces into "▁", prepend one when add_space_prefix, collapse runs of spaces (and drop leading and
trailing ones) when remove_extra_whitespaces, then pick the segmentation with the best total score
(Viterbi); characters no piece covers become <unk>, consecutive ones fused. HF's Unigram with a
Precompiled normalizer and a Metaspace pre-tokenizer does the same.

Refused, because llama.cpp would tokenize differently:
  * byte_fallback: HF spells an uncovered character as <0xXX> byte tokens, llama.cpp's UGM as <unk>
    (this is the tokenizer.json transformers writes for Gemma-3 from a GGUF; convert that GGUF, or the
    original checkpoint, instead);
  * normalizers other than Precompiled, NFKC-free Replace of spaces, Strip and Prepend "▁"
    (e.g. Lowercase, NFD): llama.cpp only runs the compiled map.
Where they still differ: trailing spaces without remove_extra_whitespaces (HF keeps a final "▁",
llama.cpp as well; both agree), and the Unicode tables of the two libraries.
"""

from __future__ import annotations

import base64
import json

from edge.errors import ModelFormatError

from .model import UGM, TokenType, Vocab

SPACE = "\u2581"
_COLLAPSE = " {2,}"  # the Replace regex HF's SentencePiece converters write for remove_extra_whitespaces


def from_tokenizer_json(tj: dict) -> Vocab:
    model = tj["model"]
    if model.get("byte_fallback"):
        raise ModelFormatError(
            "Unigram tokenizer.json with byte_fallback: llama.cpp's Unigram tokenizer has no byte "
            "fallback (it gives <unk> where this tokenizer spells bytes), so it would tokenize differently. "
            "Convert the model from its original files (a .gguf, or tokenizer.model) instead."
        )
    pieces = model["vocab"]  # [[piece, score], ...] in id order
    tokens = [str(p) for p, _ in pieces]
    scores = [float(s) for _, s in pieces]
    added = {int(a["id"]): a for a in tj.get("added_tokens", [])}
    for i in range(len(tokens), max(added, default=-1) + 1):
        tokens.append(f"[PAD{i}]")
        scores.append(0.0)
    unk = model.get("unk_id")
    types = [int(TokenType.NORMAL)] * len(tokens)
    for i in range(len(tokens)):
        if i in added:
            tokens[i] = added[i]["content"]
            types[i] = int(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED)
        elif i >= len(pieces):
            types[i] = int(TokenType.UNUSED)
    if unk is not None:
        types[int(unk)] = int(TokenType.UNKNOWN)
    charsmap, collapse, prepend = _normalizer(tj.get("normalizer"))
    return Vocab(
        model=UGM,
        pre="default",
        tokens=tokens,
        scores=scores,
        token_types=types,
        add_space_prefix=_space_prefix(tj.get("pre_tokenizer"), prepend),
        precompiled_charsmap=charsmap,
        remove_extra_whitespaces=collapse,
        special_ids={"unk": int(unk)} if unk is not None else {},
    )


def _steps(node: dict | None, key: str) -> list[dict]:
    if not node:
        return []
    return [s for s in node.get(key, []) if s] if node.get("type") == "Sequence" else [node]


def _normalizer(norm: dict | None) -> tuple[bytes | None, bool, bool]:
    """(precompiled charsmap, collapse spaces, prepend "▁") from a tokenizer.json normalizer."""
    charsmap, collapse, prepend = None, False, False
    for step in _steps(norm, "normalizers"):
        kind = step.get("type")
        pattern = step.get("pattern") or {}
        if kind == "Precompiled":
            charsmap = base64.b64decode(step.get("precompiled_charsmap") or "") or None
        elif kind == "Replace" and pattern.get("Regex") == _COLLAPSE:
            collapse = True
        elif kind == "Replace" and pattern.get("String") == " " and step.get("content") == SPACE:
            pass  # llama.cpp escapes spaces anyway
        elif kind == "Strip":
            pass  # leading/trailing spaces: dropped by llama.cpp when collapsing
        elif kind == "Prepend" and step.get("prepend") == SPACE:
            prepend = True
        else:
            raise ModelFormatError(
                f"Unigram tokenizer.json: normalizer step {json.dumps(step)[:120]} is not supported; "
                "llama.cpp's Unigram tokenizer only applies the compiled character map (Precompiled)"
            )
    return charsmap, collapse, prepend


def _space_prefix(pre: dict | None, prepend: bool) -> bool:
    for step in _steps(pre, "pretokenizers"):
        if step.get("type") == "Metaspace":
            if step.get("replacement", SPACE) != SPACE:
                raise ModelFormatError(f"Metaspace replacement {step.get('replacement')!r} is not '▁'")
            return step.get("prepend_scheme", "always") != "never" and step.get("add_prefix_space", True)
        if step.get("type") not in ("WhitespaceSplit",):
            raise ModelFormatError(
                f"Unigram tokenizer.json: pre-tokenizer {step.get('type')!r} is not supported (Metaspace is)"
            )
    return prepend


# ---------------------------------------------------------------- Vocab -> tokenizer.json parts
def hf_model(vocab: Vocab) -> dict:
    return {
        "type": "Unigram",
        "unk_id": vocab.special_ids.get("unk"),
        "vocab": [[t, float(s)] for t, s in zip(vocab.tokens, vocab.scores)],
        "byte_fallback": False,
    }


def hf_normalizer(vocab: Vocab) -> dict | None:
    steps: list[dict] = []
    if vocab.precompiled_charsmap:
        steps.append(
            {"type": "Precompiled", "precompiled_charsmap": base64.b64encode(vocab.precompiled_charsmap).decode()}
        )
    if vocab.remove_extra_whitespaces:
        steps += [
            {"type": "Strip", "strip_left": True, "strip_right": True},
            {"type": "Replace", "pattern": {"Regex": _COLLAPSE}, "content": " "},
        ]
    return {"type": "Sequence", "normalizers": steps} if steps else None


def hf_pre_tokenizer(vocab: Vocab) -> dict:
    # llama.cpp puts "▁" before every word when collapsing spaces, even without add_space_prefix
    prepend = vocab.add_space_prefix or vocab.remove_extra_whitespaces
    return {
        "type": "Metaspace",
        "replacement": SPACE,
        "prepend_scheme": "always" if prepend else "never",
        "split": True,
    }


def hf_decoder(vocab: Vocab) -> dict:
    prepend = vocab.add_space_prefix or vocab.remove_extra_whitespaces
    return {
        "type": "Metaspace",
        "replacement": SPACE,
        "prepend_scheme": "always" if prepend else "never",
        "split": True,
    }
