"""Tool-call formats: one small class per model family, registered by name (as vLLM's parsers).

Each format knows how its family's template asks for tools, the text that starts a call (the
trigger the lazy grammar waits for), the grammar of its calls (built from each tool's JSON schema by
`edge.engine.grammar`), and how to read calls back out of the model's text. The format is detected
from the chat template (`detect_format`); templates without tool support get `generic`, which
describes the tools in a system message and has the model answer in JSON (llama.cpp's generic format).

Formats (name: what the model writes):
- hermes (Hermes 2/3, Qwen 2.5): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, repeated.
- llama3_json (Llama 3.1/3.2/3.3): `<|python_tag|>`? `{"name": ..., "parameters": {...}}`, one call.
- mistral (Mistral Nemo/Small): `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`.
- phi4 (Phi-4-mini): `<|tool_call|>[{"name": ..., "arguments": {...}}, ...]<|/tool_call|>`.
- generic: `{"tool_calls": [{"name": ..., "arguments": {...}}]}` or `{"response": "..."}`.

Markers that are control tokens (`<|python_tag|>`, `[TOOL_CALLS]`, `<|tool_call|>`) are not part of
the text the server returns, so parsing accepts the calls with or without them.

While a reply streams, `parse(..., final=False)` also gives the call being written (`Partial`: its
name, and where its arguments begin), so that they can be sent as they grow. A call's `text` is its
arguments spelled as `json.dumps` spells them, re-spelled from the model's own text
(`edge.chat.jsonstream`), so the streamed fragments and the whole reply agree by construction.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from edge.chat.jsonstream import JsonRespeller
from edge.engine.grammar import schema_grammar

REGISTRY: dict[str, type[ToolFormat]] = {}
_DECODER = json.JSONDecoder()
_WS = " \t\r\n"


def register(cls: type[ToolFormat]) -> type[ToolFormat]:
    REGISTRY[cls.name] = cls
    return cls


@dataclass(frozen=True)
class Call:
    name: str
    arguments: dict
    text: str | None = None  # the arguments as json.dumps(ensure_ascii=False) spells them, from the model's text


@dataclass(frozen=True)
class Partial:
    """A call being written: its name is complete; its arguments start at text[args_at] (-1: not yet)."""

    name: str
    args_at: int


@dataclass
class Parsed:
    """What a model's text holds: text for the user and complete calls. `pending`: text that may still
    become a call (held back while streaming; dropped at the end, so no half call is returned).
    `partial`: while streaming, the call being written after `calls`."""

    content: str = ""
    calls: list[Call] = field(default_factory=list)
    pending: bool = False
    partial: Partial | None = None


def _json_at(text: str, pos: int) -> tuple[Any, int] | None:
    """(value, end) of the JSON value starting at text[pos] (after blanks), or None if incomplete/invalid."""
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    try:
        return _DECODER.raw_decode(text, pos)
    except (json.JSONDecodeError, RecursionError):
        return None


# The head of a call object as the grammars write it (name first, then the arguments); tool names
# are 1-64 of [A-Za-z0-9_.-] (edge.chat.tools.NAME_RE), so the name needs no unescaping.
_HEAD = re.compile(r'[ \t\r\n]*\{[ \t\r\n]*"name"[ \t\r\n]*:[ \t\r\n]*"([A-Za-z0-9_.\-]{1,64})"')
_ARGS = re.compile(r'[ \t\r\n]*,[ \t\r\n]*"(?:arguments|parameters)"[ \t\r\n]*:[ \t\r\n]*')


def _partial(text: str, pos: int, names: set[str]) -> Partial | None:
    """The call whose object starts at text[pos], once its name is written."""
    m = _HEAD.match(text, pos) if pos >= 0 else None
    if m is None or m.group(1) not in names:
        return None
    a = _ARGS.match(text, m.end())
    return Partial(m.group(1), a.end() if a else -1)


def _args_text(text: str, pos: int, names: set[str]) -> str | None:
    """The re-spelled arguments object of the complete call at text[pos] (None: not written name first,
    or not an object)."""
    p = _partial(text, pos, names)
    if p is None or p.args_at < 0 or not text.startswith("{", _skip_ws(text, p.args_at)):
        return None
    r = JsonRespeller()
    out = r.feed(text[p.args_at :])
    return out if r.done else None


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _held(text: str, marker: str) -> int:
    """How many characters at the end of `text` could be the beginning of `marker` (held back)."""
    for k in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0


# `"name" :` as the converter's object rule spells it (one optional space where it allows one)
_NAME_KEY = (" ?", '"', "n", "a", "m", "e", '"', " ?", ":", " ?")


def _prefixes(parts: tuple[str, ...]) -> str:
    """A regex for every non-empty prefix of the sequence `parts`: a(b(c)?)?"""
    return parts[0] + "".join(f"({p}" for p in parts[1:]) + ")?" * (len(parts) - 1)


class ToolFormat:
    name: ClassVar[str]
    marker: ClassVar[str]  # the text that starts the calls
    args_key: ClassVar[str] = "arguments"
    marker_is_token: ClassVar[bool] = False  # a control token: absent from the returned text
    lazy: ClassVar[bool] = True  # with tool_choice auto, the grammar waits for the marker

    @classmethod
    def detect(cls, source: str) -> bool:
        return cls.marker in source

    # -- grammar ----------------------------------------------------------------------------------
    def call_schema(self, tool) -> dict:
        return {
            "type": "object",
            "properties": {"name": {"const": tool.name}, self.args_key: tool.parameters},
            "required": ["name", self.args_key],
        }

    def grammar(self, tools: list, parallel: bool) -> str:
        """GBNF of the calls, starting at the marker."""
        schemas = [(f"call-{i}", self.call_schema(t)) for i, t in enumerate(tools)]
        return schema_grammar(
            schemas, lambda names: self.root(" | ".join(names), parallel), param="tools", what="tool parameters"
        )

    def root(self, call: str, parallel: bool) -> str:
        raise NotImplementedError

    def trigger_patterns(self) -> tuple[str, ...]:
        """Regexes (llama.cpp lazy grammar) that fire only when the text ENDS with the marker, so the
        grammar's first characters are exactly the marker (a token running past it never triggers)."""
        return (rf"^[\s\S]*?({re.escape(self.marker)})[ \t\n]{{0,2}}$",)

    # -- parsing ----------------------------------------------------------------------------------
    def parse(self, text: str, names: set[str], final: bool) -> Parsed:
        start = self.find_start(text)
        if start < 0:
            held = 0 if final else _held(text, self.marker)
            return Parsed(content=text[: len(text) - held], pending=held > 0)
        calls, end, complete = self.read_calls(text, start, names)
        if not complete:  # `end`: where the call being written starts (-1: none)
            if final:
                return Parsed(content=text[:start])
            return Parsed(content=text[:start], calls=calls, pending=True, partial=_partial(text, end, names))
        rest = text[end:]
        if not final and any(tag.startswith(rest.lstrip(_WS)) for tag in (self.marker, getattr(self, "close", ""))):
            return Parsed(content=text[:start], calls=calls, pending=True)  # another call or the closing tag may follow
        return Parsed(content=text[:start] + rest, calls=calls)

    def find_start(self, text: str) -> int:
        return text.find(self.marker)

    def read_calls(self, text: str, start: int, names: set[str]) -> tuple[list[Call], int, bool]:
        """(calls, end, True) when the calls from `start` are complete; else (the complete ones, where
        the next one starts or -1, False)."""
        raise NotImplementedError

    def call_at(self, text: str, pos: int, names: set[str]) -> tuple[Call | None, int] | None:
        """The call object at text[pos] and where it ends; None if incomplete, (None, end) if not a call."""
        got = _json_at(text, pos)
        if got is None:
            return None
        call = self.to_call(got[0], names)
        if call is not None:
            call = Call(call.name, call.arguments, _args_text(text, pos, names))
        return call, got[1]

    def to_call(self, obj, names: set[str]) -> Call | None:
        if not isinstance(obj, dict) or obj.get("name") not in names:
            return None
        args = obj.get(self.args_key, obj.get("arguments", obj.get("parameters", {})))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return None
        return Call(obj["name"], args) if isinstance(args, dict) else None

    def read_array(self, text: str, pos: int, names: set[str]) -> tuple[list[Call], int, bool]:
        """A JSON array of calls at text[pos]: (calls, end, True), or (complete ones, where the next one
        starts or -1, False). An entry that is not a call of a known tool makes it no calls."""
        j = _skip_ws(text, pos)
        if not text.startswith("[", j):
            return [], -1, False
        calls: list[Call] = []
        j += 1
        while True:
            e = _skip_ws(text, j)
            got = self.call_at(text, e, names)
            if got is None:
                return calls, e, False
            call, end = got
            if call is None:
                return [], -1, False
            calls.append(call)
            k = _skip_ws(text, end)
            if text.startswith(",", k):
                j = k + 1
            elif text.startswith("]", k):
                return calls, k + 1, True
            else:
                return calls, -1, False

    # -- history ----------------------------------------------------------------------------------
    def call_for_template(self, call_id: str, name: str, arguments: dict) -> dict:
        return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


@register
class Hermes(ToolFormat):
    name = "hermes"
    marker = "<tool_call>"
    close = "</tool_call>"

    def root(self, call: str, parallel: bool) -> str:
        one = f'"{self.marker}" [ \\t\\n]{{0,2}} ({call}) [ \\t\\n]{{0,2}} "{self.close}"'
        return f"({one}) ([ \\t\\n]{{0,2}} {one})*" if parallel else one

    def read_calls(self, text: str, start: int, names: set[str]) -> tuple[list[Call], int, bool]:
        calls: list[Call] = []
        pos = start
        while True:
            body = pos + len(self.marker)
            got = self.call_at(text, body, names)
            call = got[0] if got is not None else None
            if got is None or call is None:
                return calls, body, False
            pos = _skip_ws(text, got[1])
            if not text.startswith(self.close, pos):
                return calls, body, False  # the closing tag is part of the call: cut short, no call
            pos += len(self.close)
            calls.append(call)
            nxt = _skip_ws(text, pos)
            if not text.startswith(self.marker, nxt):
                return calls, pos, True
            pos = nxt


class _JsonAfterMarker(ToolFormat):
    """Calls as JSON right after an optional control-token marker, or at the very start of the reply."""

    marker_is_token = True
    bare_start: ClassVar[str]  # the JSON's first character when the marker is not in the text
    bare_parts: ClassVar[tuple[str, ...]]  # the grammar's first pieces without the marker (regexes)

    def find_start(self, text: str) -> int:
        i = text.find(self.marker)
        if i >= 0:
            return i
        j = _skip_ws(text, 0)
        return 0 if text.startswith(self.bare_start, j) else -1  # blanks before a bare call are not content

    def parse(self, text: str, names: set[str], final: bool) -> Parsed:
        j = _skip_ws(text, 0)
        if not final and j == len(text):
            return Parsed(content=text, pending=True)  # only blanks yet: a bare call may follow
        return super().parse(text, names, final)

    def body(self, text: str, start: int) -> int:
        return start + len(self.marker) if text.startswith(self.marker, start) else start

    def trigger_patterns(self) -> tuple[str, ...]:
        return (*super().trigger_patterns(), rf"^[ \t\n]*({_prefixes(self.bare_parts)})$")


@register
class Mistral(_JsonAfterMarker):
    name = "mistral"
    marker = "[TOOL_CALLS]"
    bare_start = "["
    bare_parts = (r"\[", " ?", r"\{", *_NAME_KEY)

    def root(self, call: str, parallel: bool) -> str:
        more = f' ("," " "? ({call}))*' if parallel else ""
        return f'"{self.marker}"? "[" " "? ({call}){more} "]"'

    def read_calls(self, text: str, start: int, names: set[str]) -> tuple[list[Call], int, bool]:
        calls, end, complete = self.read_array(text, self.body(text, start), names)
        return (calls, self.after_array(text, end), True) if complete else (calls, end, False)

    def after_array(self, text: str, end: int) -> int:
        return end

    def call_for_template(self, call_id, name, arguments):
        return {**super().call_for_template(call_id, name, arguments), "id": mistral_id(call_id)}


@register
class Phi4(Mistral):
    name = "phi4"
    marker = "<|tool_call|>"
    close = "<|/tool_call|>"

    def root(self, call: str, parallel: bool) -> str:
        more = f' ("," " "? ({call}))*' if parallel else ""
        return f'"{self.marker}"? "[" " "? ({call}){more} "]" "{self.close}"?'

    def after_array(self, text, end):
        j = _skip_ws(text, end)
        return j + len(self.close) if text.startswith(self.close, j) else end

    def call_for_template(self, call_id, name, arguments):
        return ToolFormat.call_for_template(self, call_id, name, arguments)


@register
class Llama3Json(_JsonAfterMarker):
    name = "llama3_json"
    marker = "<|python_tag|>"
    args_key = "parameters"
    bare_start = "{"
    bare_parts = (r"\{", *_NAME_KEY)

    @classmethod
    def detect(cls, source: str) -> bool:
        return cls.marker in source or ("<|start_header_id|>" in source and '"parameters"' in source)

    def root(self, call: str, parallel: bool) -> str:
        return f'"{self.marker}"? ({call})'

    def read_calls(self, text: str, start: int, names: set[str]) -> tuple[list[Call], int, bool]:
        body = self.body(text, start)
        got = self.call_at(text, body, names)
        if got is None:
            return [], body, False
        call, end = got
        return ([call], end, True) if call is not None else ([], -1, False)


@register
class Generic(ToolFormat):
    """For templates without tools: the tools go into a system message and the whole reply is JSON."""

    name = "generic"
    marker = "{"
    lazy = False  # the reply is JSON whether it calls or answers, so the grammar runs from the first token

    @classmethod
    def detect(cls, source: str) -> bool:
        return True

    def reply_grammar(self, tools: list, parallel: bool, allow_answer: bool) -> str:
        schemas = [(f"call-{i}", self.call_schema(t)) for i, t in enumerate(tools)]

        def root(names: list[str]) -> str:
            call = f"({' | '.join(names[:-1])})"
            calls = f'"{{" space "\\"tool_calls\\"" space ":" space "[" space {call}'
            calls += f' ("," space {call})*' if parallel else ""
            calls += ' "]" space "}" space'
            answer = ' | "{" space "\\"response\\"" space ":" space string "}" space' if allow_answer else ""
            return calls + answer

        schemas.append(("response-text", {"type": "string"}))  # pulls in the strict string rules
        return schema_grammar(schemas, root, param="tools", what="tool parameters")

    def parse(self, text: str, names: set[str], final: bool) -> Parsed:
        if not final:  # the calls complete so far and the one being written, or the answer so far
            m = _GENERIC_CALLS.match(text)
            if m is None:
                return Parsed(content=_partial_response(text), pending=True)
            calls, at, _ = self.read_array(text, m.end(), names)
            return Parsed(calls=calls, pending=True, partial=_partial(text, at, names))
        got = _json_at(text, 0)
        if got is None or not isinstance(got[0], dict):
            return Parsed(content=_partial_response(text))
        obj = got[0]
        if isinstance(obj.get("response"), str):
            return Parsed(content=obj["response"])
        m = _GENERIC_CALLS.match(text)
        if m is not None:  # the grammar's spelling: read in place, so each call keeps its own text
            calls, _, complete = self.read_array(text, m.end(), names)
            if complete and calls and len(calls) == len(obj.get("tool_calls") or ()):
                return Parsed(calls=calls)
        raw = obj.get("tool_calls", [obj["tool_call"]] if "tool_call" in obj else None)
        found = [self.to_call(c, names) for c in raw] if isinstance(raw, list) else [None]
        calls = [c for c in found if c is not None]
        return Parsed(calls=calls) if calls and len(calls) == len(found) else Parsed(content="")

    def system_prompt(self, tools: list, required: bool) -> str:
        described = "\n".join(json.dumps(t.as_openai()["function"], ensure_ascii=False) for t in tools)
        how = (
            'Respond with a JSON object {"tool_calls": [{"name": <tool name>, "arguments": <arguments object>}]}'
            if required
            else 'Respond in JSON, either {"tool_calls": [{"name": <tool name>, "arguments": <arguments object>}]} '
            'to call tools, or {"response": "<your answer>"} to answer the user'
        )
        return f"You can call these tools:\n{described}\n\n{how}."


_GENERIC_CALLS = re.compile(r'[ \t\r\n]*\{[ \t\r\n]*"tool_calls"[ \t\r\n]*:')


def _partial_response(text: str) -> str:
    """The readable part of a `{"response": "...` cut short (max_tokens); "" for anything else."""
    m = re.match(r'\s*\{\s*"response"\s*:\s*"', text)
    if not m:
        return ""
    s = text[m.end() :]
    for cut in range(len(s), max(-1, len(s) - 8), -1):  # drop a trailing half escape
        try:
            return json.loads('"' + s[:cut] + '"')
        except json.JSONDecodeError:
            continue
    return ""


def mistral_id(call_id: str) -> str:
    """Mistral's templates insist on 9 alphanumeric characters; other ids map onto such one, stably."""
    if len(call_id) == 9 and call_id.isalnum():
        return call_id
    import hashlib

    digest = hashlib.sha256(call_id.encode()).hexdigest()
    return digest[:9]


DETECT_ORDER = ("hermes", "mistral", "phi4", "llama3_json")


def detect_format(template_source: str | None) -> ToolFormat:
    """The format a chat template speaks; `generic` for templates without tools (or no template)."""
    src = template_source or ""
    if "tools" in src:
        for name in DETECT_ORDER:
            if REGISTRY[name].detect(src):
                return REGISTRY[name]()
    return Generic()


def get_format(name: str) -> ToolFormat:
    if name not in REGISTRY:
        raise KeyError(f"unknown tool-call format {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]()
