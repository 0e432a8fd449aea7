"""The tokenizer of an ONNX model folder (tokenizer.json through the `tokenizers` library).

The scheduler streams text from token *bytes* (edge.engine.detok never splits a UTF-8 character), so each
token's bytes are recovered from its vocabulary string: byte-level BPE (GPT-2's printable-byte
alphabet) or SentencePiece-style (▁ for spaces, <0xXX> byte-fallback tokens). Control tokens give no
text, as llama.cpp renders them. End-of-generation: the manifest's eos ids, the tokenizer's eos
token and the usual end-of-turn tokens the vocabulary marks special.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from edge.errors import ModelFormatError

EOT_NAMES = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<eos>",
    "</s>",
)
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _byte_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: printable stand-in character -> byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def _text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class Vocab:
    def __init__(self, folder: Path, eos_ids: list[int]):
        from tokenizers import Tokenizer

        try:
            self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
            raw = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        except Exception as exc:  # the tokenizers library raises plain Exceptions on bad files
            raise ModelFormatError(
                f"{folder / 'tokenizer.json'} is not a readable tokenizer ({exc}); re-export the model"
            ) from None
        cfg_path = folder / "tokenizer_config.json"
        self.config = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
        self.byte_level = "ByteLevel" in json.dumps(raw.get("decoder") or {})
        self._bytes = _byte_decoder() if self.byte_level else None
        added = raw.get("added_tokens") or []
        self.special = {t["id"] for t in added if t.get("special")}
        self.added = {t["id"]: t["content"] for t in added}
        self.bos_token = _text(self.config.get("bos_token"))
        self.eos_token = _text(self.config.get("eos_token"))
        self.eog = set(eos_ids)
        for name in (self.eos_token, *EOT_NAMES):
            tid = self.tok.token_to_id(name) if name else None
            if tid is not None and (tid in self.special or name == self.eos_token):
                self.eog.add(tid)
        self.add_bos = self._adds_bos()
        self._pieces: dict[int, bytes] = {}

    def _adds_bos(self) -> bool:
        bos = self.tok.token_to_id(self.bos_token) if self.bos_token else None
        ids = self.tok.encode("a", add_special_tokens=True).ids
        return bos is not None and bool(ids) and ids[0] == bos

    def chat_template(self, folder: Path) -> str | None:
        if (folder / "chat_template.jinja").is_file():
            return (folder / "chat_template.jinja").read_text(encoding="utf-8")
        t = self.config.get("chat_template")
        if isinstance(t, list):  # [{"name": "default", "template": ...}, ...]
            t = next((e.get("template") for e in t if isinstance(e, dict) and e.get("name") == "default"), None)
        return t if isinstance(t, str) else None

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special).ids

    def piece(self, token: int) -> bytes:
        got = self._pieces.get(token)
        if got is None:
            got = self._pieces[token] = self._piece(token)
        return got

    def display_piece(self, token: int) -> bytes:
        """The piece, with control tokens by their name (how a list of alternatives shows them)."""
        if token in self.special:
            return self.added[token].encode("utf-8")
        return self.piece(token)

    def _piece(self, token: int) -> bytes:
        if token in self.special:
            return b""
        if token in self.added:
            return self.added[token].encode("utf-8")
        s = self.tok.id_to_token(token)
        if s is None:
            return b""
        if self._bytes is not None:
            return bytes(self._bytes.get(c, 0x3F) for c in s) if all(c in self._bytes for c in s) else s.encode()
        m = _BYTE_TOKEN.match(s)
        return bytes([int(m.group(1), 16)]) if m else s.replace("\u2581", " ").encode("utf-8")

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")
