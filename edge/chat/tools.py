"""Tool calling for a chat request, the same for the OpenAI and Ollama routes.

`ToolPlan.build` validates `tools` and `tool_choice` (each problem a BadRequestError naming it) and
picks the format from the model's template (`edge.chat.toolformats`). The plan then renders the
prompt (the template's own `tools` variable, or the generic system message), gives the grammar
(from the first token for `required` or a named function; from the format's marker, lazily, for
`auto`), and reads calls out of the model's text, whole or streamed (`ToolStream`).

tool_choice: `none` sends no tools to the model and no grammar; `auto` lets it answer or call;
`required` forces at least one call; a named function forces exactly one call of that function (as
vLLM does): a grammar that allowed more lets a small model repeat the call until max_tokens, and a
reply cut there returns no call.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from edge.chat.jsonstream import JsonRespeller
from edge.chat.toolformats import Call, Generic, Parsed, ToolFormat, detect_format, mistral_id
from edge.engine.grammar import check_schema
from edge.errors import BadRequestError

log = logging.getLogger("edge.server")
MAX_TOOLS = 128
NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
EMPTY_PARAMETERS = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict

    def as_openai(self) -> dict:
        fn = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class ToolCall:
    """A call as the APIs return it: `arguments` is the object; `arguments_json` the OpenAI string."""

    id: str
    name: str
    arguments: dict
    text: str | None = None  # the arguments re-spelled from the model's text (what streaming sends)

    @property
    def arguments_json(self) -> str:
        return self.text if self.text is not None else json.dumps(self.arguments, ensure_ascii=False)

    @classmethod
    def of(cls, call_id: str, call: Call) -> ToolCall:
        return cls(call_id, call.name, call.arguments, call.text)


def parse_tools(raw: list | None) -> list[Tool]:
    """OpenAI/Ollama `tools` ({"type": "function", "function": {name, description, parameters}})."""
    if not raw:
        return []
    if len(raw) > MAX_TOOLS:
        raise BadRequestError(f"at most {MAX_TOOLS} tools per request, got {len(raw)}", param="tools")
    tools, seen = [], set()
    for i, t in enumerate(raw):
        where = f"tools[{i}]"
        if (
            not isinstance(t, dict)
            or t.get("type", "function") != "function"
            or not isinstance(t.get("function"), dict)
        ):
            raise BadRequestError(f'{where} must be {{"type": "function", "function": {{"name": ...}}}}', param="tools")
        fn = t["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise BadRequestError(f"{where}.function.name must be 1-64 letters, digits, _ . or -", param="tools")
        if name in seen:
            raise BadRequestError(f"{where}: two tools are named {name!r}; tool names must be unique", param="tools")
        seen.add(name)
        desc = fn.get("description") or ""
        if not isinstance(desc, str):
            raise BadRequestError(f"{where}.function.description must be a string", param="tools")
        params = fn.get("parameters")
        params = EMPTY_PARAMETERS if params is None else params
        check_schema(params, param="tools", what=f"{where}.function.parameters")
        if params.get("type", "object") != "object":
            raise BadRequestError(f"{where}.function.parameters must describe an object", param="tools")
        tools.append(Tool(name, desc, params))
    return tools


@dataclass(frozen=True)
class ToolChoice:
    mode: str  # "none" | "auto" | "required"
    name: str | None = None  # a named function (mode "required")


def parse_tool_choice(raw: Any, tools: list[Tool]) -> ToolChoice:
    if raw is None:
        return ToolChoice("auto" if tools else "none")
    if isinstance(raw, str):
        if raw not in ("none", "auto", "required"):
            raise BadRequestError(f"tool_choice {raw!r}: use none, auto, required or a function", param="tool_choice")
        if raw == "required" and not tools:
            raise BadRequestError("tool_choice required needs at least one tool in `tools`", param="tool_choice")
        return ToolChoice(raw if tools else "none")
    name = raw.get("function", {}).get("name") if isinstance(raw, dict) else None
    if not isinstance(name, str):
        raise BadRequestError(
            'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    if name not in {t.name for t in tools}:
        raise BadRequestError(f"tool_choice names {name!r}, which is not in `tools`", param="tool_choice")
    return ToolChoice("required", name)


@dataclass
class ToolPlan:
    format: ToolFormat
    tools: list[Tool]
    choice: ToolChoice
    parallel: bool = True
    names: set[str] = field(init=False)

    def __post_init__(self):
        self.names = {t.name for t in self.callable}

    @classmethod
    def build(cls, template_source: str | None, tools: list | None, tool_choice: Any, parallel: bool | None):
        parsed = parse_tools(tools)
        return cls(
            detect_format(template_source), parsed, parse_tool_choice(tool_choice, parsed), parallel is not False
        )

    @property
    def active(self) -> bool:
        return self.choice.mode != "none"

    @property
    def many(self) -> bool:
        """Whether the grammar allows several calls in one reply: parallel_tool_calls, unless one function is named."""
        return self.parallel and self.choice.name is None

    @property
    def callable(self) -> list[Tool]:
        return [t for t in self.tools if t.name == self.choice.name] if self.choice.name else self.tools

    def new_id(self) -> str:
        if self.format.name == "mistral":
            return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))
        return "call_" + secrets.token_hex(12)

    # -- prompt -------------------------------------------------------------------------------------
    def template_tools(self) -> list[dict] | None:
        """The template's `tools` variable (None for tool_choice none and for the generic format)."""
        if not self.active or isinstance(self.format, Generic):
            return None
        return [t.as_openai() for t in self.callable]

    def messages(self, messages: list[dict]) -> list[dict]:
        """API messages -> template messages: calls and results in the format's shape, ids checked."""
        out = history(messages, self.format)
        if self.active and isinstance(self.format, Generic):
            out = _with_system(out, self.format.system_prompt(self.callable, self.choice.mode == "required"))
        return out

    # -- grammar ----------------------------------------------------------------------------------
    def sampling(self, tokenize) -> dict:
        """SamplingParams fields: grammar, and for a lazy grammar its trigger patterns and tokens.

        A request with tools does not draft speculatively: a call is a few dozen tokens whose n-grams
        ("name", "arguments", the tool names) also start the tool descriptions in the prompt, so the
        drafts copy descriptions and are rejected; verifying them made a call ~1.3x slower on SmolLM2.
        """
        if not self.active:
            return {}
        fmt, tools, parallel = self.format, self.callable, self.many
        if isinstance(fmt, Generic):
            grammar = fmt.reply_grammar(tools, parallel, allow_answer=self.choice.mode == "auto")
            return {"grammar": grammar, "speculate": False}
        out: dict = {"grammar": fmt.grammar(tools, parallel), "speculate": False}
        if self.choice.mode == "auto":
            ids = tokenize(fmt.marker)
            out["grammar_triggers"] = fmt.trigger_patterns()
            out["grammar_trigger_tokens"] = tuple(ids) if len(ids) == 1 else ()
        return out

    # -- reading the reply --------------------------------------------------------------------------
    def parse(self, text: str, final: bool = True) -> Parsed:
        if not self.active:
            return Parsed(content=text)
        return self.format.parse(text, self.names, final)

    def calls(self, parsed: Parsed) -> list[ToolCall]:
        return [ToolCall.of(self.new_id(), c) for c in parsed.calls]


@dataclass
class _Open:
    """The call being written while streaming: what of its arguments went out."""

    index: int
    id: str
    name: str
    args_at: int = -1  # where its arguments start in the text; -1 while not written
    fed: int = 0  # text read into `spell` so far
    spell: JsonRespeller = field(default_factory=JsonRespeller)
    sent: str = ""  # the arguments text sent so far
    held: bool = False  # arguments that are not an object (a JSON string): sent whole at the end


class ToolStream:
    """Feeds streamed text; returns events as they become certain, in order:

    ("content", text); ("start", index, id, name) once a call's name is written; ("args", index,
    fragment) as its arguments are written (re-spelled as `json.dumps` spells them, so the fragments
    add up to the call's `arguments_json`); ("call", index, ToolCall) once the call is complete.
    Text that may still turn into a call is held back. A reply cut short ends with a call that
    started but never completed (its `finish_reason` is "length")."""

    def __init__(self, plan: ToolPlan):
        self.plan, self.text, self.sent = plan, "", 0
        self.calls: list[ToolCall] = []
        self.open: _Open | None = None

    def feed(self, piece: str) -> list[tuple]:
        self.text += piece
        return self._new(self.plan.parse(self.text, final=False))

    def finish(self) -> list[tuple]:
        return self._new(self.plan.parse(self.text, final=True))

    def _new(self, p: Parsed) -> list[tuple]:
        out: list[tuple] = []
        if len(p.content) > self.sent:
            out.append(("content", p.content[self.sent :]))
            self.sent = len(p.content)
        for c in p.calls[len(self.calls) :]:
            self._complete(c, out)
        if p.partial is not None and len(p.calls) == len(self.calls):
            self._grow(p.partial.name, p.partial.args_at, out)
        return out

    def _complete(self, c: Call, out: list[tuple]) -> None:
        index, opened = len(self.calls), self.open
        if opened is None or opened.index != index:
            opened = _Open(index, self.plan.new_id(), c.name)
            out.append(("start", index, opened.id, c.name))
        call = ToolCall.of(opened.id, c)
        rest = call.arguments_json
        if rest.startswith(opened.sent):
            rest = rest[len(opened.sent) :]
        else:  # cannot happen for text the call grammars allow; the stream would not add up
            log.warning("streamed arguments of %s do not begin its arguments %r", c.name, rest)
        if rest:
            out.append(("args", index, rest))
        self.calls.append(call)
        self.open = None
        out.append(("call", index, call))

    def _grow(self, name: str, args_at: int, out: list[tuple]) -> None:
        index = len(self.calls)
        if self.open is None:
            self.open = _Open(index, self.plan.new_id(), name)
            out.append(("start", index, self.open.id, name))
        o = self.open
        if args_at < 0 or o.held:
            return
        if o.args_at < 0:
            o.args_at = o.fed = args_at
        new = self.text[o.fed :]
        if not o.sent and not new.strip():
            return
        if not o.sent and not new.lstrip().startswith("{"):
            o.held = True
            return
        o.fed = len(self.text)
        fragment = o.spell.feed(new)
        if fragment:
            o.sent += fragment
            out.append(("args", index, fragment))


# -- history --------------------------------------------------------------------------------------
def history(messages: list[dict], fmt: ToolFormat) -> list[dict]:
    """Assistant calls and tool results rendered for `fmt`; a tool result must answer a call made before."""
    out: list[dict | None] = []
    calls_by_id: dict[str, str] = {}
    for i, m in enumerate(messages):
        role = m.get("role")
        if role == "assistant" and m.get("tool_calls"):
            calls = _calls_of(m["tool_calls"], i)
            calls_by_id.update((call_id, call_name) for call_id, call_name, _ in calls)
            out.append(_assistant_calls(m, calls, fmt))
        elif role == "tool":
            cid: str | None = m.get("tool_call_id")
            name: str | None = m.get("tool_name") or m.get("name")
            if cid is not None:
                if cid not in calls_by_id:
                    raise BadRequestError(
                        f"messages[{i}]: tool_call_id {cid!r} matches no tool call of an earlier assistant message",
                        param="messages",
                    )
                name = calls_by_id[cid]
            out.append(_tool_result(m, cid, name, fmt, out))
        else:
            out.append(m)
    return [m for m in out if m is not None]


def _calls_of(raw: list, i: int) -> list[tuple[str, str, dict]]:
    calls = []
    for j, c in enumerate(raw):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequestError(f"messages[{i}].tool_calls[{j}] needs function.name", param="messages")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                raise BadRequestError(
                    f"messages[{i}].tool_calls[{j}].function.arguments is not a JSON object", param="messages"
                ) from None
        if not isinstance(args, dict):
            raise BadRequestError(
                f"messages[{i}].tool_calls[{j}].function.arguments must be an object", param="messages"
            )
        calls.append((str(c.get("id") or f"call_{i}_{j}"), fn["name"], args))
    return calls


def _assistant_calls(m: dict, calls: list[tuple[str, str, dict]], fmt: ToolFormat) -> dict:
    if isinstance(fmt, Generic):
        body = {"tool_calls": [{"name": n, "arguments": a} for _, n, a in calls]}
        return {"role": "assistant", "content": json.dumps(body, ensure_ascii=False)}
    return {
        "role": "assistant",
        "content": m.get("content") or "",
        "tool_calls": [fmt.call_for_template(cid, n, a) for cid, n, a in calls],
    }


def _tool_result(m: dict, cid: str | None, name: str | None, fmt: ToolFormat, out: list[dict | None]) -> dict | None:
    content = m.get("content") or ""
    if isinstance(fmt, Generic):
        piece = json.dumps({"tool_response": {"name": name, "content": content}}, ensure_ascii=False)
        prev = out[-1] if out else None
        if prev is not None and prev.get("_tool_results"):
            prev["content"] += "\n" + piece  # consecutive results: one user turn (roles keep alternating)
            return None
        return {"role": "user", "content": piece, "_tool_results": True}
    if cid is not None and fmt.name == "mistral":
        cid = mistral_id(cid)
    return {"role": "tool", "content": content, "tool_call_id": cid, "name": name}


def _with_system(messages: list[dict], text: str) -> list[dict]:
    if messages and messages[0].get("role") == "system":
        first = messages[0]
        return [{**first, "content": f"{first.get('content') or ''}\n\n{text}".strip()}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def fold_system(messages: list[dict]) -> list[dict]:
    """For templates that refuse a system role (Gemma): the system text opens the first user turn."""
    if not messages or messages[0].get("role") != "system":
        return messages
    system, rest = messages[0].get("content") or "", list(messages[1:])
    for i, m in enumerate(rest):
        if m.get("role") == "user":
            rest[i] = {**m, "content": f"{system}\n\n{m.get('content') or ''}"}
            return rest
    return [{"role": "user", "content": system}, *rest]


def clean(messages: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if not k.startswith("_")} for m in messages]


def render(template, messages: list[dict], plan: ToolPlan | None) -> str:
    """The prompt text for `messages` with the plan's tools (template: edge.chat.templates.ChatTemplate)."""
    if plan is None:
        return template.render(messages, add_generation_prompt=True)
    msgs = clean(plan.messages(messages))
    try:
        return template.render(msgs, add_generation_prompt=True, tools=plan.template_tools())
    except BadRequestError:
        if msgs[0].get("role") != "system" or not isinstance(plan.format, Generic):
            raise
        return template.render(fold_system(msgs), add_generation_prompt=True)  # e.g. Gemma: no system role
