"""Chat templates: Hugging Face Jinja2 templates from model files, rendered in a bounded sandbox.

A chat template is code that arrives inside a model file. It is rendered the way Hugging Face's
`apply_chat_template` renders it (same helpers, same Jinja2 options, so the prompt a model was
trained on comes out byte for byte), but inside `edge.chat.sandbox`: Jinja2's
`ImmutableSandboxedEnvironment` (no dunder attributes, no mutation, so the CVE-2024-34359 class of
payloads raises instead of running) with bounded time, output size and memory. Any template
error, an exception raised by the template (`raise_exception(...)`), a sandbox violation or a
limit is a `BadRequestError` carrying the template's message.

Models without a template (e.g. the bundled Gemma-3-270M, a base model) get a fallback:
- family "gemma*": Gemma's documented turn format (`<start_of_turn>user\\n...<end_of_turn>\\n`,
  assistant turns as `model`, system text prepended to the first user turn as Gemma's own
  templates do, ending with `<start_of_turn>model\\n`). Chosen because these are the model's own
  special tokens: an instruction-tuned Gemma follows it, and a base Gemma has at least seen them.
- any other family: a plain transcript, one `Role: content` paragraph per message, ending with
  `Assistant:`. Chosen because a base model without chat tokens continues such a transcript
  sensibly, while an invented token format (e.g. ChatML) would be split into meaningless pieces.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

from edge.errors import BadRequestError

if TYPE_CHECKING:
    import jinja2

MAX_TEMPLATE_CHARS = 256 * 1024  # real templates are < 40 KB
DEFAULT_MAX_CHARS = 8 * 1024 * 1024  # rendered prompt: far beyond any context window
DEFAULT_TIMEOUT = 2.0  # seconds; a real template renders in well under a millisecond
MIN_BUDGET = 16 * 1024 * 1024  # characters a render may build in total, at least ...
BUDGET_PER_INPUT_CHAR = 32  # ... or this many per character of messages and tools


# --- messages ---


def _content_text(content: Any) -> Any:
    """OpenAI content parts -> one string (text parts joined by newlines, as llama.cpp does)."""
    if not isinstance(content, list):
        return content
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            raise BadRequestError(
                f"message content part of type {kind!r} is not supported; this server takes text only"
            )
        texts.append(str(part.get("text", "")))
    return "\n".join(texts)


def normalize_messages(messages: list[dict]) -> list[dict]:
    """Validate chat messages and flatten OpenAI content parts; returns new dicts (inputs untouched)."""
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("messages must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequestError(f"messages[{i}] must be an object with a string 'role'")
        m = dict(m)
        content = _content_text(m.get("content"))
        m["content"] = "" if content is None and not m.get("tool_calls") else content
        out.append(m)
    return out


# --- fallbacks for models without a template ---


def _gemma_fallback(messages: list[dict], add_generation_prompt: bool, bos_token: str | None) -> str:
    system = "".join(str(m["content"] or "") for m in messages if m["role"] == "system")
    parts = [bos_token or ""]
    for m in (m for m in messages if m["role"] != "system"):
        role = "model" if m["role"] == "assistant" else "user"
        text = str(m["content"] or "")
        if system and role == "user":
            text, system = f"{system}\n\n{text}", ""
        parts.append(f"<start_of_turn>{role}\n{text}<end_of_turn>\n")
    if add_generation_prompt:
        parts.append("<start_of_turn>model\n")
    return "".join(parts)


def _transcript_fallback(messages: list[dict], add_generation_prompt: bool) -> str:
    lines = [f"{m['role'].capitalize()}: {m['content'] or ''}" for m in messages]
    if add_generation_prompt:
        lines.append("Assistant:")
    return "\n\n".join(lines)


class ChatTemplate:
    """A model's chat template (or the documented fallback when `source` is None or empty).

    `render()` gives exactly what HF's `apply_chat_template(..., tokenize=False)` gives for the same
    template text and special tokens. `prompt()` is what to tokenize: it also drops a leading BOS
    text when the tokenizer adds BOS itself (as llama.cpp's server does), so BOS is never doubled.

    The template compiles (and Jinja2 imports) at the first render, not when a model loads: a server
    answering plain completions first never pays for it, and a template that does not compile is
    the BadRequestError of that first render.
    """

    def __init__(
        self,
        source: str | None,
        *,
        bos_token: str | None,
        eos_token: str | None,
        family: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        max_chars: int = DEFAULT_MAX_CHARS,
    ):
        if source is not None and len(source) > MAX_TEMPLATE_CHARS:
            raise BadRequestError(
                f"the model's chat template is {len(source)} characters; the limit is {MAX_TEMPLATE_CHARS}"
            )
        self.source = source or None
        self.bos_token, self.eos_token = bos_token, eos_token
        self.family = (family or "").lower()
        self.timeout, self.max_chars = timeout, max_chars
        self._template: jinja2.Template | None = None  # compiled at the first render (_compiled)
        self._compile_lock = threading.Lock()

    @classmethod
    def for_model(cls, info, **limits) -> ChatTemplate:
        """From an engine's ModelInfo (edge.engine.base): its template, special tokens and family."""
        return cls(info.chat_template, bos_token=info.bos_token, eos_token=info.eos_token, family=info.family, **limits)

    @property
    def is_fallback(self) -> bool:
        return self.source is None

    def _compiled(self, source: str) -> jinja2.Template:
        with self._compile_lock:  # renders run in worker threads: one compiles, the others wait
            if self._template is None:
                from edge.chat.sandbox import compile_template

                self._template = compile_template(source, self.max_chars)
            return self._template

    def render(self, messages: list[dict], *, add_generation_prompt: bool = True, tools=None, **kw) -> str:
        messages = normalize_messages(messages)
        if self.source is None:
            return self._fallback(messages, add_generation_prompt)
        variables = {
            **kw,
            "messages": messages,
            "tools": tools,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token or "",
            "eos_token": self.eos_token or "",
        }
        from edge.chat.sandbox import render_chunks, run_bounded

        template, limit = self._compiled(self.source), self.max_chars
        budget = max(MIN_BUDGET, BUDGET_PER_INPUT_CHAR * _input_chars(messages, tools))
        return run_bounded(lambda: render_chunks(template, variables, limit, budget), self.timeout)

    def prompt(
        self, messages: list[dict], *, add_bos: bool, add_generation_prompt: bool = True, tools=None, **kw
    ) -> str:
        """The text to tokenize with `add_special=add_bos`."""
        text = self.render(messages, add_generation_prompt=add_generation_prompt, tools=tools, **kw)
        if add_bos and self.bos_token and text.startswith(self.bos_token):
            text = text[len(self.bos_token) :]
        return text

    def _fallback(self, messages: list[dict], add_generation_prompt: bool) -> str:
        if self.family.startswith("gemma"):
            return _gemma_fallback(messages, add_generation_prompt, self.bos_token)
        return _transcript_fallback(messages, add_generation_prompt)


def _input_chars(messages: list[dict], tools: Any) -> int:
    try:
        return len(json.dumps([messages, tools], default=str))
    except (TypeError, ValueError):
        raise BadRequestError("messages and tools must be JSON-like data (objects, lists, strings, numbers)") from None
