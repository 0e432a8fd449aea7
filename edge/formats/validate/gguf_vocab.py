"""The vocabulary of a GGUF file: consistent, and safe for llama.cpp's tokenizer on any input.

Checked (each a load failure or a process abort in llama.cpp 0c1e570, src/llama-vocab.cpp):
- tokenizer.ggml.model and .pre are names llama.cpp knows (else it refuses to load);
- tokens: a string array, UTF-8, no two equal (GGML_ASSERT id_to_token.size() == token_to_id.size());
- scores (f32/i32) and token_type (i32, values 1..6) as long as the token list;
- BYTE tokens spelled <0xXX> (token_to_byte does substr(3, 2): std::out_of_range on detokenize),
  none in a WordPiece vocabulary (GGML_ABORT);
- SentencePiece ("llama"): the 256 byte tokens, else byte_to_token throws std::out_of_range on the
  first character without a token (an emoji) and the process dies;
- byte-level BPE missing some of the 256 byte characters is only a warning (llama.cpp drops them);
- merges: a string array of "left right" pairs;
- special token ids inside the vocabulary, and a BOS/EOS/SEP id whenever the tokenizer must add it
  (GGML_ASSERT(special_bos_id != LLAMA_TOKEN_NULL) on every prompt otherwise);
- the embedding (token_embd, output) and {arch}.vocab_size agree with the token count.
"""

from __future__ import annotations

import array
from dataclasses import dataclass

from edge.errors import ModelFormatError
from edge.formats.gguf import ArrayRef, GGUFFile, GGUFMeta, TensorInfo, ValueType
from edge.formats.validate import llama_vocab_names as names
from edge.lightimport import gguf_constants

gguf = gguf_constants()  # the enums and tables only: no reader, writer or numpy (edge.lightimport)
VT = ValueType

MAX_TOKEN_BYTES = 1 << 16
K = gguf.Keys.Tokenizer
SPECIAL_ID_KEYS = (K.BOS_ID, K.EOS_ID, K.EOT_ID, K.EOM_ID, K.UNK_ID, K.SEP_ID, K.PAD_ID, K.MASK_ID, K.FIM_PRE_ID,
                   K.FIM_SUF_ID, K.FIM_MID_ID, K.FIM_PAD_ID, K.FIM_REP_ID, K.FIM_SEP_ID, K.PREFIX_ID, K.SUFFIX_ID,
                   K.MIDDLE_ID)  # fmt: skip
_INT_TYPES = {VT.UINT8, VT.INT8, VT.UINT16, VT.INT16, VT.UINT32, VT.INT32, VT.UINT64, VT.INT64}
BYTE = int(gguf.TokenType.BYTE)
# llama.cpp's default special ids per tokenizer model: (bos, eos, sep), None = LLAMA_TOKEN_NULL
_DEFAULT_IDS = {"llama": (1, 2, None), "bert": (101, None, 102), "gpt2": (11, 11, None), "hybriddna": (11, 11, None),
                "whitespace": (11, 11, None), "t5": (None, 1, None), "plamo2": (1, 2, None)}  # fmt: skip


@dataclass(frozen=True)
class Vocab:
    model: str  # tokenizer.ggml.model
    pre: str  # tokenizer.ggml.pre ("" when absent)
    size: int  # number of tokens (0 without a vocabulary)
    warnings: tuple[str, ...] = ()


def check_vocab(f: GGUFFile) -> Vocab:
    h = f.meta
    model = _string_key(h, K.MODEL, required=True)
    if model not in names.TOKENIZER_MODELS:
        raise ModelFormatError(
            f"GGUF {K.MODEL} is {model!r}, which llama.cpp does not know; known: {', '.join(names.TOKENIZER_MODELS)}"
        )
    pre = _pre(h, model)
    if model in names.NO_VOCAB:
        return Vocab(model, pre, 0)
    tokens = _tokens(f)
    types = _token_types(f, len(tokens))
    _check_scores(h, len(tokens))
    _check_byte_tokens(tokens, types, model)
    _check_coverage(tokens, model, pre)
    if model in names.BPE_MODELS and pre != "kimi-k2":
        _check_merges(f)
    _check_special_ids(h, model, pre, len(tokens))
    _check_embedding(h, f.tensors, len(tokens))
    missing = missing_byte_chars(tokens, model, pre)
    warn = f"byte-level BPE vocabulary cannot spell {len(missing)} bytes ({', '.join(f'0x{b:02X}' for b in missing)}); llama.cpp drops them from prompts"
    return Vocab(model, pre, len(tokens), (warn,) if missing else ())


def _string_key(h: GGUFMeta, key: str, required: bool = False) -> str:
    if key not in h.kv:
        if required:
            raise ModelFormatError(
                f"GGUF file has no {key}: it carries no tokenizer, llama.cpp cannot load it; convert the model again"
            )
        return ""
    if h.types[key] != VT.STRING:
        raise ModelFormatError(f"GGUF {key} must be a string, found value type {h.types[key]}")
    return h.kv[key]


def _pre(h: GGUFMeta, model: str) -> str:
    pre = _string_key(h, K.PRE)
    if model in names.BPE_MODELS and model != "gemma4" and pre and pre not in names.PRE_TOKENIZERS:
        raise ModelFormatError(
            f"GGUF {K.PRE} is {pre!r}, a pre-tokenizer llama.cpp does not know (it would refuse to load the model); "
            f"known: {', '.join(names.PRE_TOKENIZERS)}"
        )
    return "gemma4" if model == "gemma4" else pre


def _array(h: GGUFMeta, key: str, item_types: set[int], what: str) -> ArrayRef | None:
    if key not in h.kv:
        return None
    ref = h.kv[key]
    if not isinstance(ref, ArrayRef) or ref.item_type not in item_types:
        raise ModelFormatError(f"GGUF {key} must be an array of {what}")
    return ref


def _tokens(f: GGUFFile) -> list[str]:
    ref = _array(f.meta, K.LIST, {VT.STRING}, "strings")
    if ref is None or ref.count == 0:
        raise ModelFormatError(f"GGUF file has no {K.LIST}: the vocabulary is missing; convert the model again")
    tokens = f.strings(ref, K.LIST, MAX_TOKEN_BYTES)
    texts = [t or f"[EMPTY_{i}]" for i, t in enumerate(tokens)] if "" in tokens else tokens  # llama.cpp's name for ""
    if len(set(texts)) != len(texts):
        seen: dict[str, int] = {}
        for i, t in enumerate(texts):
            if t in seen:
                raise ModelFormatError(
                    f"GGUF vocabulary has token {t!r} twice (ids {seen[t]} and {i}); llama.cpp aborts the process on such a file"
                )
            seen[t] = i
    return tokens


def _token_types(f: GGUFFile, n: int) -> array.array | None:
    ref = _array(f.meta, K.TOKEN_TYPE, {VT.INT32}, "i32")
    if ref is None:
        return None
    if ref.count != n:
        raise ModelFormatError(f"GGUF {K.TOKEN_TYPE} has {ref.count} items for {n} tokens")
    types = array.array("i")  # (n_vocab,)
    types.frombytes(f.buf[ref.offset : ref.offset + 4 * n])
    bad = next((i for i, t in enumerate(types) if not 1 <= t <= BYTE), None)
    if bad is not None:
        raise ModelFormatError(f"GGUF {K.TOKEN_TYPE}[{bad}] is {types[bad]}; valid token types are 1..6")
    return types


def _check_scores(h: GGUFMeta, n: int) -> None:
    ref = _array(h, K.SCORES, {VT.FLOAT32, VT.INT32}, "f32 or i32")
    if ref is not None and ref.count != n:
        raise ModelFormatError(f"GGUF {K.SCORES} has {ref.count} items for {n} tokens")


def _check_byte_tokens(tokens: list[str], types, model: str) -> None:
    if types is None or model == "rwkv":
        return
    for i, t in enumerate(types):
        if t != BYTE:
            continue
        if model == "bert":
            raise ModelFormatError(f"GGUF WordPiece vocabulary marks token {i} as a byte token; llama.cpp aborts on it")
        if not _is_hex_byte(tokens[i]):
            raise ModelFormatError(
                f"GGUF token {i} ({tokens[i]!r}) is marked as a byte token but is not spelled <0xXX>; "
                "llama.cpp would crash when it prints it"
            )


def _is_hex_byte(t: str) -> bool:
    return (
        len(t) == 6 and t.startswith("<0x") and t.endswith(">") and all(c in "0123456789abcdefABCDEF" for c in t[3:5])
    )


def _check_coverage(tokens: list[str], model: str, pre: str) -> None:
    have = set(tokens)
    if model == "llama":
        missing = [b for b in range(256) if f"<0x{b:02X}>" not in have and not (0 < b < 128 and chr(b) in have)]
        if missing:
            raise ModelFormatError(
                f"GGUF SentencePiece vocabulary (tokenizer.ggml.model 'llama') lacks byte tokens for {len(missing)} bytes "
                f"(e.g. <0x{missing[0]:02X}>): llama.cpp kills the process on the first character without a token "
                "(an emoji); convert the model with byte-fallback tokens <0x00>..<0xFF>"
            )


def missing_byte_chars(tokens: list[str], model: str, pre: str) -> list[int]:
    """Bytes a byte-level BPE vocabulary cannot spell. Not refused: real vocabularies (SmolLM2) lack a
    few (0x04, 0xF5..0xFF, ...), and llama.cpp 0c1e570 drops such bytes instead of aborting."""
    if model != "gpt2" or pre in names.PRE_RAW_UTF8:
        return []
    from gguf.vocab import bytes_to_unicode  # gguf-py's table; pulls in its writer and numpy, so only here

    have = set(tokens)
    return [b for b, c in bytes_to_unicode().items() if c not in have]


def _check_merges(f: GGUFFile) -> None:
    ref = _array(f.meta, K.MERGES, {VT.STRING}, "strings")
    if ref is None:
        raise ModelFormatError(f"GGUF BPE vocabulary has no {K.MERGES}; llama.cpp cannot load it")
    for i, m in enumerate(f.strings(ref, K.MERGES, MAX_TOKEN_BYTES)):
        cut = m.find(" ", 1)
        if cut < 0 or cut == len(m) - 1 or " " in m[cut + 1 :]:
            raise ModelFormatError(f"GGUF {K.MERGES}[{i}] is {m!r}, not a 'left right' pair")


def _check_special_ids(h: GGUFMeta, model: str, pre: str, n: int) -> None:
    ids = {}
    for key in SPECIAL_ID_KEYS:
        if key not in h.kv:
            continue
        if h.types[key] not in _INT_TYPES:
            raise ModelFormatError(f"GGUF {key} must be an integer, found value type {h.types[key]}")
        if not 0 <= h.kv[key] < n:
            raise ModelFormatError(f"GGUF {key} is {h.kv[key]}, outside the vocabulary of {n} tokens")
        ids[key] = h.kv[key]
    bos, eos, sep = _DEFAULT_IDS.get(model, (None, None, None))
    bos = (
        None
        if pre in names.PRE_NO_BOS and K.BOS_ID not in ids
        else ids.get(K.BOS_ID, bos if bos is not None and bos < n else None)
    )
    eos = ids.get(K.EOS_ID, eos if eos is not None and eos < n else None)
    sep = ids.get(K.SEP_ID, sep if sep is not None and sep < n else None)
    add_bos = _flag(h, K.ADD_BOS, model in ("llama", "bert") or pre in names.PRE_ADD_BOS) or pre in (
        "gemma4",
        "granite-embed-multi-311m",
    )
    add_eos = _flag(h, K.ADD_EOS, model == "t5")
    for needed, what, key in (
        (add_bos or model == "bert", bos, K.BOS_ID),
        (add_eos, eos, K.EOS_ID),
        (model == "bert", sep, K.SEP_ID),
    ):
        if needed and what is None:
            raise ModelFormatError(
                f"GGUF vocabulary must add a token on every prompt but has no valid {key}; llama.cpp aborts on it"
            )


def _flag(h: GGUFMeta, key: str, default: bool) -> bool:
    if key not in h.kv:
        return default
    if h.types[key] != VT.BOOL:
        raise ModelFormatError(f"GGUF {key} must be a bool, found value type {h.types[key]}")
    return bool(h.kv[key])


def _check_embedding(h: GGUFMeta, tensors: tuple[TensorInfo, ...], n: int) -> None:
    arch = h.kv.get(gguf.Keys.General.ARCHITECTURE)
    size_key = gguf.Keys.LLM.VOCAB_SIZE.format(arch=arch)
    if isinstance(arch, str) and size_key in h.kv and h.kv[size_key] != n:
        raise ModelFormatError(f"GGUF {size_key} is {h.kv[size_key]} but the vocabulary has {n} tokens")
    for kind in (gguf.MODEL_TENSOR.TOKEN_EMBD, gguf.MODEL_TENSOR.OUTPUT):
        name = gguf.TENSOR_NAMES[kind] + ".weight"
        t = next((t for t in tensors if t.name == name), None)
        if t is not None and len(t.shape) >= 2 and t.shape[1] != n:
            raise ModelFormatError(
                f"GGUF tensor {name} has shape {t.shape}: {t.shape[1]} rows for a vocabulary of {n} tokens"
            )
