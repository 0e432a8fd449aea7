"""Re-spell a JSON value as it streams in, the way `json.dumps(value, ensure_ascii=False)` spells it.

A tool call's arguments are streamed while the model writes them, yet the fragments must concatenate
to the non-streamed reply's `arguments`, which is `json.dumps` of the parsed object. `JsonRespeller`
reads the model's text (valid JSON, as the call grammar makes it) a piece at a time and returns the
canonical text of what is already certain: blanks dropped, `, ` and `: ` as separators, string
characters escaped as `json.dumps` escapes them (escapes in the input decoded first), and a number
or literal once it is complete (a number only when the next character ends it: `1` may become
`12`). It stops at the end of the first value and ignores what follows.

Repeated keys are the one input whose canonical text differs from `json.dumps` of the parsed object
(which keeps the last); the tool-call readers refuse them (`edge.chat.toolformats`).
"""

from __future__ import annotations

import json

_WS = " \t\r\n"
_NUMBER = set("0123456789+-.eE")
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_LITERALS = ("true", "false", "null")


def _spell(ch: str) -> str:
    """One character inside a string, as json.dumps(ensure_ascii=False) writes it."""
    return json.dumps(ch, ensure_ascii=False)[1:-1]


class JsonRespeller:
    def __init__(self):
        self.state = "value"  # value | string | escape | unicode | number | literal | done
        self.depth = 0  # open objects and arrays
        self.buf = ""  # the number, literal or \\u hex digits read so far
        self.high = ""  # a high surrogate waiting for its low half

    @property
    def done(self) -> bool:
        return self.state == "done"

    def feed(self, text: str) -> str:
        out: list[str] = []
        for ch in text:
            if self.state == "done":
                break
            self._char(ch, out)
        return "".join(out)

    def _char(self, ch: str, out: list[str]) -> None:
        state = self.state
        if state == "string":
            if ch == "\\":
                self.state = "escape"
            elif ch == '"':
                self._flush_high(out)
                out.append('"')
                self._end_value()
            else:
                self._text(ch, out)
        elif state == "escape":
            if ch == "u":
                self.state, self.buf = "unicode", ""
            else:
                self.state = "string"
                self._text(_SIMPLE_ESCAPES.get(ch, ch), out)
        elif state == "unicode":
            self.buf += ch
            if len(self.buf) == 4:
                self.state = "string"
                self._text(chr(int(self.buf, 16)), out)
        elif state == "number":
            if ch in _NUMBER:
                self.buf += ch
                return
            out.append(json.dumps(json.loads(self.buf)))
            self._end_value()
            if self.state != "done":
                self._char(ch, out)
        elif state == "literal":
            self.buf += ch
            if self.buf in _LITERALS:
                out.append(self.buf)
                self._end_value()
        else:
            self._between(ch, out)

    def _between(self, ch: str, out: list[str]) -> None:
        if ch in _WS:
            return
        if ch in "{[":
            self.depth += 1
            out.append(ch)
        elif ch in "}]":
            self.depth -= 1
            out.append(ch)
            if self.depth <= 0:
                self.state = "done"
        elif ch == ":":
            out.append(": ")
        elif ch == ",":
            out.append(", ")
        elif ch == '"':
            self.state = "string"
            out.append('"')
        elif ch == "-" or ch.isdigit():
            self.state, self.buf = "number", ch
        else:
            self.state, self.buf = "literal", ch

    def _end_value(self) -> None:
        self.state = "value" if self.depth > 0 else "done"

    def _text(self, ch: str, out: list[str]) -> None:
        """A decoded string character; a surrogate pair written as two \\u escapes becomes one character."""
        code = ord(ch)
        if 0xD800 <= code < 0xDC00:
            self._flush_high(out)
            self.high = ch
            return
        if self.high and 0xDC00 <= code < 0xE000:
            ch = chr(0x10000 + ((ord(self.high) - 0xD800) << 10) + (code - 0xDC00))
            self.high = ""
        self._flush_high(out)
        out.append(_spell(ch))

    def _flush_high(self, out: list[str]) -> None:
        if self.high:
            out.append(_spell(self.high))
            self.high = ""
