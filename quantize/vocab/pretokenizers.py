"""Byte-level BPE pre-tokenizers: tokenizer.json structure <-> llama.cpp's tokenizer.ggml.pre.

One table, used in both directions. `pre` is chosen from the tokenizer.json pre-tokenizer itself
(steps and regexes), never from the tokenizer class name. The HF side of each row is what
reproduces llama.cpp's splitting for that `pre` (src/llama-vocab.cpp, llm_tokenizer_bpe):
e.g. llama.cpp's "smollm"/"starcoder" split every \\p{N} digit on its own, while HF's Digits
pre-tokenizer only splits ASCII digits, so the HF side writes a Split on \\p{N} instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from edge.errors import ModelFormatError

log = logging.getLogger(__name__)

LLAMA3_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT4O_RE = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# A step is a small tuple: ("split", regex) | ("digits", individual) | ("bytelevel", use_regex).
Steps = tuple[tuple, ...]


@dataclass(frozen=True)
class PreTokenizer:
    pre: str  # llama.cpp's tokenizer.ggml.pre
    steps: tuple[Steps, ...]  # what a tokenizer.json may show (read direction; ours written last)
    hf_steps: Steps  # what we write so HF splits as llama.cpp does (write direction)
    ignore_merges: bool = False  # llama.cpp's ignore_merges for this pre (whole word in vocab wins)
    clean_spaces: bool = True  # llama.cpp's clean_spaces (detokenizer)


_NUM = ("split", r"\p{N}")
TABLE: tuple[PreTokenizer, ...] = (
    # Llama 3 / 3.1 / 3.2 (and Falcon 3, ...): one Split regex + ByteLevel without its own regex.
    PreTokenizer(
        "llama-bpe",
        ((("split", LLAMA3_RE), ("bytelevel", False)),),
        (("split", LLAMA3_RE), ("bytelevel", False)),
        ignore_merges=True,
    ),
    # Qwen 2 / 2.5: as Llama 3 but single digits.
    PreTokenizer(
        "qwen2",
        ((("split", QWEN2_RE), ("bytelevel", False)),),
        (("split", QWEN2_RE), ("bytelevel", False)),
        clean_spaces=False,
    ),
    # GPT-4o / Llama 4 style.
    PreTokenizer("gpt-4o", ((("split", GPT4O_RE), ("bytelevel", False)),), (("split", GPT4O_RE), ("bytelevel", False))),
    # SmolLM / SmolLM2 (clean_up_tokenization_spaces false): digits isolated, then GPT-2's regex.
    PreTokenizer("smollm", ((("digits", True), ("bytelevel", True)),), (_NUM, ("bytelevel", True)), clean_spaces=False),
    # StarCoder: the same split, cleaned spaces when detokenizing.
    PreTokenizer("starcoder", ((("digits", True), ("bytelevel", True)),), (_NUM, ("bytelevel", True))),
    # GPT-2 itself: ByteLevel with its built-in regex.
    PreTokenizer("gpt-2", ((("bytelevel", True),),), (("bytelevel", True),)),
)
BY_PRE = {p.pre: p for p in TABLE}
# llama.cpp aliases of the same splitting.
BY_PRE.update({"llama3": BY_PRE["llama-bpe"], "llama-v3": BY_PRE["llama-bpe"], "default": BY_PRE["gpt-2"]})


def steps_of(tokenizer_json: dict) -> Steps:
    """The pre-tokenizer of a tokenizer.json as a tuple of comparable steps."""
    node = tokenizer_json.get("pre_tokenizer") or {}
    nodes = node.get("pretokenizers", []) if node.get("type") == "Sequence" else [node] if node else []
    return tuple(_step(n) for n in nodes)


def _step(n: dict) -> tuple:
    kind = n.get("type")
    if kind == "Split":
        pat = n.get("pattern", {})
        return ("split", pat.get("Regex", pat.get("String")))
    if kind == "Digits":
        return ("digits", bool(n.get("individual_digits")))
    if kind == "ByteLevel":
        return ("bytelevel", bool(n.get("use_regex", True)))
    return (str(kind),)


def detect_pre(tokenizer_json: dict, *, clean_up_spaces: bool | None = None) -> str:
    """llama.cpp's `pre` name for a byte-level BPE tokenizer.json; ModelFormatError if unknown."""
    steps = steps_of(tokenizer_json)
    rows = [p for p in TABLE if steps in p.steps + (p.hf_steps,)]
    if len(rows) > 1 and clean_up_spaces is not None:  # smollm vs starcoder: only detokenizing differs
        rows = [p for p in rows if p.clean_spaces == clean_up_spaces] or rows
    if rows:
        return rows[0].pre
    if steps and steps[-1] == ("bytelevel", True):
        log.warning(
            "unknown pre-tokenizer %s: using llama.cpp's 'gpt-2' splitting (closest safe choice); "
            "check tokenization of digits and non-Latin text",
            steps,
        )
        return "gpt-2"
    raise ModelFormatError(
        f"byte-level BPE pre-tokenizer {steps!r} is not one llama.cpp knows; supported: "
        + ", ".join(p.pre for p in TABLE)
        + ". Add a row to quantize/vocab/pretokenizers.py if llama.cpp supports it."
    )


def hf_pre_tokenizer(pre: str | None) -> dict:
    """The tokenizer.json pre_tokenizer that splits as llama.cpp does for `pre`."""
    row = BY_PRE.get(pre or "default")
    if row is None:
        raise ModelFormatError(
            f"GGUF tokenizer.ggml.pre {pre!r} is not supported for export; supported: {', '.join(sorted(BY_PRE))}"
        )
    return {"type": "Sequence", "pretokenizers": [_hf_node(s) for s in row.hf_steps]}


def _hf_node(step: tuple) -> dict:
    if step[0] == "split":
        return {"type": "Split", "pattern": {"Regex": step[1]}, "behavior": "Isolated", "invert": False}
    if step[0] == "bytelevel":
        return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": step[1]}
    raise ValueError(step)


def ignore_merges(pre: str | None) -> bool:
    row = BY_PRE.get(pre or "default")
    return bool(row and row.ignore_merges)
