"""WordPiece (BERT) tokenizer.json <-> llama.cpp's "bert" vocabulary (its WPM tokenizer).

llama.cpp's WPM tokenizer is BERT's: BertNormalizer (clean text, split CJK characters, lowercase and
strip accents unless tokenizer.ggml.normalizer.* say otherwise), BertPreTokenizer (split on
whitespace and punctuation), then greedy longest-match per word. It stores the vocabulary in
"phantom space" form: a word-initial piece "foo" is "▁foo", a continuation "##oo" is "oo", and
control tokens ([CLS], [SEP], ...) stay as they are. It always wraps a text in [CLS] ... [SEP]
(bos and sep) when special tokens are added.

Limits (where HF and llama.cpp could differ, not seen on real text): HF turns a word longer than
`max_input_chars_per_word` (100) into [UNK], llama.cpp tokenizes it; lowercasing uses each
library's Unicode tables.
"""

from __future__ import annotations

from edge.errors import ModelFormatError

from .model import WPM, TokenType, Vocab

PHANTOM = "\u2581"
CONTINUATION = "##"


def from_tokenizer_json(tj: dict, tokens: list[str], added: dict[int, dict]) -> Vocab:
    """tokens: the ids' texts (holes as "[PADi]"); added: added-token records by id."""
    _check_supported(tj)
    known = set(tj["model"]["vocab"])
    types = []
    for i, t in enumerate(tokens):
        if i in added:
            types.append(int(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED))
        elif t not in known:
            types.append(int(TokenType.UNUSED))
        else:
            types.append(int(TokenType.NORMAL))
    phantom = [t if typ == TokenType.CONTROL else to_phantom(t) for t, typ in zip(tokens, types)]
    norm = _bert_normalizer(tj) or {}
    return Vocab(
        model=WPM,
        pre="default",  # llama.cpp has no pre-tokenizer choice for WPM
        tokens=phantom,
        scores=[0.0] * len(phantom),
        token_types=types,
        add_sep=False,
        lowercase=bool(norm.get("lowercase", True)),
        strip_accents=None if norm.get("strip_accents") is None else bool(norm["strip_accents"]),
    )


def to_phantom(token: str) -> str:
    return token[len(CONTINUATION) :] if token.startswith(CONTINUATION) else PHANTOM + token


def from_phantom(token: str) -> str:
    return token[len(PHANTOM) :] if token.startswith(PHANTOM) else CONTINUATION + token


def _bert_normalizer(tj: dict) -> dict | None:
    norm = tj.get("normalizer") or {}
    steps = norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm]
    return next((s for s in steps if s.get("type") == "BertNormalizer"), None)


def _check_supported(tj: dict) -> None:
    model, pre = tj["model"], tj.get("pre_tokenizer") or {}
    norm = _bert_normalizer(tj)
    why = None
    if model.get("continuing_subword_prefix", CONTINUATION) != CONTINUATION:
        why = f"continuing_subword_prefix {model.get('continuing_subword_prefix')!r} is not '##'"
    elif norm is None:
        why = "its normalizer is not a BertNormalizer"
    elif not norm.get("handle_chinese_chars", True) or not norm.get("clean_text", True):
        why = "its BertNormalizer turns off clean_text or handle_chinese_chars"
    elif pre.get("type") != "BertPreTokenizer":
        why = f"its pre-tokenizer is {pre.get('type')!r}, not BertPreTokenizer"
    if why:
        raise ModelFormatError(
            f"WordPiece tokenizer.json: {why}; llama.cpp's WordPiece tokenizer implements BERT's "
            "normalizer and pre-tokenizer only, so it would tokenize differently"
        )


# ---------------------------------------------------------------- Vocab -> tokenizer.json parts
def hf_model(vocab: Vocab) -> dict:
    return {
        "type": "WordPiece",
        "unk_token": vocab.token("unk") or "[UNK]",
        "continuing_subword_prefix": CONTINUATION,
        "max_input_chars_per_word": 100,
        "vocab": {hf_token(vocab, i): i for i in range(len(vocab.tokens))},
    }


def hf_token(vocab: Vocab, i: int) -> str:
    t = vocab.tokens[i]
    return t if vocab.token_types[i] == TokenType.CONTROL else from_phantom(t)


def hf_normalizer(vocab: Vocab) -> dict:
    return {
        "type": "BertNormalizer",
        "clean_text": True,
        "handle_chinese_chars": True,
        "strip_accents": vocab.strip_accents,
        "lowercase": True if vocab.lowercase is None else vocab.lowercase,
    }


def hf_post_processor(vocab: Vocab) -> dict:
    """[CLS] $A [SEP] (and [CLS] $A [SEP] $B [SEP]), as llama.cpp adds bos and sep."""
    cls, sep = vocab.token("bos"), vocab.token("sep") or vocab.token("eos")
    if cls is None or sep is None:
        raise ModelFormatError("WordPiece vocabulary without [CLS]/[SEP] ids: llama.cpp cannot wrap a text")

    def special(text: str, type_id: int) -> dict:
        return {"SpecialToken": {"id": text, "type_id": type_id}}

    def seq(name: str, type_id: int) -> dict:
        return {"Sequence": {"id": name, "type_id": type_id}}

    return {
        "type": "TemplateProcessing",
        "single": [special(cls, 0), seq("A", 0), special(sep, 0)],
        "pair": [special(cls, 0), seq("A", 0), special(sep, 0), seq("B", 1), special(sep, 1)],
        "special_tokens": {
            t: {"id": t, "ids": [vocab.tokens.index(t)], "tokens": [t]} for t in dict.fromkeys((cls, sep))
        },
    }
