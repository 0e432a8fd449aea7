"""Hugging Face tokenizer folder -> Vocab.

The kind is read from tokenizer.json itself (model type, pre-tokenizer, normalizer, decoder),
never from the class name in tokenizer_config.json:
  * byte-level BPE (ByteLevel pre-tokenizer or decoder)        -> "gpt2" + merges + `pre`
  * SentencePiece as BPE + byte_fallback / "▁" (Gemma-3 style)  -> "llama" with scores derived
    from the merge ranks, so llama.cpp's SPM merge order (best score first) is HF's (lowest rank first)
  * tokenizer.model (SentencePiece protobuf)                     -> "llama" with its own scores
  * WordPiece (BERT)                                             -> "bert" (wordpiece.py)
  * Unigram (XLM-RoBERTa, T5)                                    -> "t5" (unigram.py)
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from edge.errors import ModelFormatError

from . import unigram, wordpiece
from .model import BPE, SPM, WPM, TokenType, Vocab
from .pretokenizers import detect_pre
from .safety import check_vocab
from .spm_model import read_spm

log = logging.getLogger(__name__)
_BYTE_RE = re.compile(r"^<0x[0-9A-F]{2}>$")
# Texts of end-of-turn / end-of-message tokens of the supported families.
EOT_TEXTS = ("<|eot_id|>", "<end_of_turn>", "<|end|>", "<|im_end|>")
EOM_TEXTS = ("<|eom_id|>",)


def load_vocab(src_dir: Path, *, vocab_size: int | None = None) -> Vocab:
    src_dir = Path(src_dir)
    tj = _read_json(src_dir / "tokenizer.json")
    cfg = _read_json(src_dir / "tokenizer_config.json") or {}
    spm_path = src_dir / "tokenizer.model"
    kind = _kind(tj) if tj else None
    if tj is not None and kind == BPE:
        vocab = _from_bpe_json(tj, cfg)
    elif tj is not None and kind == "WordPiece":
        vocab = wordpiece.from_tokenizer_json(tj, *_id_table(tj))
    elif tj is not None and kind == "Unigram":
        vocab = unigram.from_tokenizer_json(tj)
    elif spm_path.exists() and kind in (SPM, None):
        vocab = _from_spm_model(spm_path, tj, cfg, src_dir)
    elif tj is not None and kind == SPM:
        vocab = _from_spm_json(tj)
    elif tj is None:
        raise ModelFormatError(
            f"{src_dir} has neither tokenizer.json nor tokenizer.model; copy the model's tokenizer files there"
        )
    else:
        raise ModelFormatError(
            f"{src_dir}/tokenizer.json: unsupported tokenizer model {kind!r} "
            "(supported: byte-level BPE, SentencePiece BPE with byte fallback, WordPiece, Unigram)"
        )
    _fill_specials(vocab, tj, cfg, src_dir)
    if vocab_size is not None:
        if vocab_size < len(vocab):
            raise ModelFormatError(
                f"tokenizer has {len(vocab)} tokens but the embedding only {vocab_size} rows; "
                "the tokenizer does not belong to these weights"
            )
        vocab.pad_to(vocab_size)
    check_vocab(vocab)
    return vocab


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{path} is not valid JSON ({e}); re-download it") from e


def _kind(tj: dict) -> str:
    model = tj.get("model") or {}
    if model.get("type") not in (None, "BPE"):
        return str(model.get("type"))
    blob = json.dumps([tj.get("pre_tokenizer"), tj.get("decoder"), tj.get("normalizer")])
    if '"ByteLevel"' in blob:
        return BPE
    if model.get("byte_fallback") or "\u2581" in blob or '"Metaspace"' in blob:
        return SPM
    raise ModelFormatError(
        "tokenizer.json is BPE but neither byte-level nor SentencePiece-style "
        "(no ByteLevel, no byte_fallback, no Metaspace): not supported by llama.cpp"
    )


# ---------------------------------------------------------------- tokens by id
def _id_table(tj: dict) -> tuple[list[str], dict[int, dict]]:
    """Tokens in id order (model vocab + added tokens) and the added-token records by id."""
    vocab: dict[str, int] = dict(tj["model"]["vocab"])
    added = {int(a["id"]): a for a in tj.get("added_tokens", [])}
    n = max([*vocab.values(), *added.keys()], default=-1) + 1
    tokens: list[str | None] = [None] * n
    for text, i in vocab.items():
        tokens[i] = text
    for i, a in added.items():
        tokens[i] = a["content"]
    return [f"[PAD{i}]" if t is None else t for i, t in enumerate(tokens)], added


def _added_type(a: dict) -> int:
    return int(TokenType.CONTROL if a.get("special") else TokenType.USER_DEFINED)


def _from_bpe_json(tj: dict, cfg: dict) -> Vocab:
    tokens, added = _id_table(tj)
    types = [int(TokenType.NORMAL)] * len(tokens)
    for i, a in added.items():
        types[i] = _added_type(a)
    known = set(tj["model"]["vocab"])
    for i, t in enumerate(tokens):
        if t.startswith("[PAD") and i not in added and t not in known:
            types[i] = int(TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges", [])]
    pre = detect_pre(tj, clean_up_spaces=cfg.get("clean_up_tokenization_spaces"))
    return Vocab(model=BPE, pre=pre, tokens=tokens, scores=[0.0] * len(tokens), token_types=types, merges=merges)


def _from_spm_json(tj: dict) -> Vocab:
    """SentencePiece-style tokenizer.json (BPE + byte_fallback + "▁"): derive SPM scores from merges."""
    tokens, added = _id_table(tj)
    model = tj["model"]
    unk = model.get("unk_token")
    types = [int(TokenType.NORMAL)] * len(tokens)
    for i, t in enumerate(tokens):  # an added token's own flag wins over its name (Gemma-3's <unk> is CONTROL)
        if _BYTE_RE.match(t):
            types[i] = int(TokenType.BYTE)
        elif i in added:
            types[i] = _added_type(added[i])
        elif t == unk:
            types[i] = int(TokenType.UNKNOWN)
    scores = _scores_from_merges(tokens, model.get("merges", []))
    return Vocab(
        model=SPM,
        pre="default",
        tokens=tokens,
        scores=scores,
        token_types=types,
        add_space_prefix=_space_prefix(tj, default=False),
    )


def _scores_from_merges(tokens: list[str], merges: list) -> list[float]:
    """score(token) = -(rank of the first merge that makes it); unmerged tokens score below all merges.

    llama.cpp's SPM merges the adjacent pair whose joined text has the highest score, HF's BPE the
    pair with the lowest merge rank, so this makes both pick the same pair at every step.
    """
    n_merges = len(merges)
    rank_of: dict[str, int] = {}
    for r, m in enumerate(merges):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        rank_of.setdefault(a + b, r)
    return [-float(rank_of.get(t, n_merges)) for t in tokens]


def _space_prefix(tj: dict, *, default: bool) -> bool:
    norm = json.dumps(tj.get("normalizer"))
    pre = tj.get("pre_tokenizer") or {}
    if '"Prepend"' in norm:
        return True
    if pre.get("type") == "Metaspace":
        return pre.get("prepend_scheme", "always") != "never" and pre.get("add_prefix_space", True)
    return default


def _from_spm_model(path: Path, tj: dict | None, cfg: dict, src_dir: Path) -> Vocab:
    m = read_spm(path)
    tokens, scores, types = list(m.pieces), list(m.scores), list(m.types)
    extra = _added_tokens(tj, cfg, src_dir)
    for i, (text, special) in sorted(extra.items()):
        if i < len(tokens):
            if tokens[i] != text:
                log.warning("added token %d %r replaces SentencePiece piece %r", i, text, tokens[i])
                tokens[i] = text
            if types[i] == TokenType.NORMAL or tokens[i] != m.pieces[i]:
                types[i] = int(TokenType.CONTROL if special else TokenType.USER_DEFINED)
            continue
        while len(tokens) < i:
            tokens.append(f"[PAD{len(tokens)}]")
            scores.append(-1000.0)
            types.append(int(TokenType.UNUSED))
        tokens.append(text)
        scores.append(-1000.0)
        types.append(int(TokenType.CONTROL if special else TokenType.USER_DEFINED))
    space = _space_prefix(tj, default=m.add_dummy_prefix) if tj else m.add_dummy_prefix
    if cfg.get("add_prefix_space") is not None:
        space = bool(cfg["add_prefix_space"])
    return Vocab(model=SPM, pre="default", tokens=tokens, scores=scores, token_types=types, add_space_prefix=space)


def _added_tokens(tj: dict | None, cfg: dict, src_dir: Path) -> dict[int, tuple[str, bool]]:
    out: dict[int, tuple[str, bool]] = {}
    for a in (tj or {}).get("added_tokens", []):
        out[int(a["id"])] = (a["content"], bool(a.get("special")))
    for i, a in (cfg.get("added_tokens_decoder") or {}).items():
        out.setdefault(int(i), (a["content"], bool(a.get("special"))))
    for text, i in (_read_json(src_dir / "added_tokens.json") or {}).items():
        out.setdefault(int(i), (text, True))
    return out


# ---------------------------------------------------------------- specials and flags
def _token_text(v) -> str | None:
    return v.get("content") if isinstance(v, dict) else v


def _fill_specials(vocab: Vocab, tj: dict | None, cfg: dict, src_dir: Path) -> None:
    stm = _read_json(src_dir / "special_tokens_map.json") or {}
    gen = _read_json(src_dir / "generation_config.json") or {}
    index = {t: i for i, t in enumerate(vocab.tokens)}
    for role in ("bos", "eos", "unk", "sep", "pad", "mask"):
        text = _token_text(cfg.get(f"{role}_token")) or _token_text(stm.get(f"{role}_token"))
        if text is not None and text in index:
            vocab.special_ids[role] = index[text]
    if "eos" not in vocab.special_ids and gen.get("eos_token_id") is not None:
        eos = gen["eos_token_id"]
        vocab.special_ids["eos"] = int(eos[0] if isinstance(eos, list) else eos)
    if "bos" not in vocab.special_ids and gen.get("bos_token_id") is not None:
        vocab.special_ids["bos"] = int(gen["bos_token_id"])
    if vocab.model == WPM:  # BERT: bos/eos are the [CLS] ... [SEP] around a text, as llama.cpp reads them
        single = [t for t in _post_single(tj) or [] if t != "$A"]
        if single and single[0] in index:
            vocab.special_ids.setdefault("bos", index[single[0]])
        if len(single) > 1 and single[-1] in index:
            vocab.special_ids.setdefault("eos", index[single[-1]])
    if vocab.model == SPM and "unk" not in vocab.special_ids:
        unk = [i for i, t in enumerate(vocab.token_types) if t == TokenType.UNKNOWN]
        if unk:
            vocab.special_ids["unk"] = unk[0]
    for role, texts in (("eot", EOT_TEXTS), ("eom", EOM_TEXTS)):
        hit = next((index[t] for t in texts if t in index), None)
        if hit is not None and hit != vocab.special_ids.get("eos"):
            vocab.special_ids[role] = hit
    vocab.add_bos, vocab.add_eos = _add_flags(vocab, tj, cfg)
    vocab.chat_template = _chat_template(cfg, src_dir)


def _add_flags(vocab: Vocab, tj: dict | None, cfg: dict) -> tuple[bool, bool]:
    """add_bos/add_eos from tokenizer_config.json, else from the post-processor template."""
    single = _post_single(tj)
    bos, eos = vocab.token("bos"), vocab.token("eos")
    add_bos = cfg.get("add_bos_token")
    add_eos = cfg.get("add_eos_token")
    if add_bos is None:
        add_bos = bool(single) and single[0] == bos if single is not None else vocab.model == SPM
    if add_eos is None:
        add_eos = bool(single) and single[-1] == eos and len(single) > 1 if single is not None else False
    return bool(add_bos), bool(add_eos)


def _post_single(tj: dict | None) -> list[str] | None:
    """Special tokens around $A in a TemplateProcessing post-processor, "$A" included; None if absent."""
    pp = (tj or {}).get("post_processor") or {}
    procs = pp.get("processors", []) if pp.get("type") == "Sequence" else [pp]
    for p in procs:
        if p.get("type") == "TemplateProcessing":
            out = []
            for piece in p.get("single", []):
                if "SpecialToken" in piece:
                    out.append(piece["SpecialToken"]["id"])
                elif "Sequence" in piece:
                    out.append("$A")
            return out
    return None


def _chat_template(cfg: dict, src_dir: Path) -> str | None:
    tpl = cfg.get("chat_template")
    if isinstance(tpl, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in tpl}
        tpl = named.get("default") or next(iter(named.values()), None)
    if tpl is None:
        for name in ("chat_template.jinja", "chat_template.json"):
            p = src_dir / name
            if p.exists():
                text = p.read_text(encoding="utf-8")
                tpl = json.loads(text).get("chat_template") if name.endswith(".json") else text
                break
    return tpl
