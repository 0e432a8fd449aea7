"""Turning API messages and prompts into token ids, the same way for OpenAI and Ollama routes."""

from __future__ import annotations

from typing import Any

from edge.chat import tools
from edge.engine.base import Engine
from edge.errors import BadRequestError


def chat_prompt(engine: Engine, template, messages: list[dict], plan: tools.ToolPlan | None = None) -> list[int]:
    """Render with the model's chat template (with the plan's tools), then tokenize without a second BOS.

    Templates that write the BOS text themselves (Llama 3: "<|begin_of_text|>...") would get a
    second BOS if tokenized with add_special=True; llama.cpp warns about exactly that.
    """
    if not messages:
        raise BadRequestError("messages is empty: send at least one message", param="messages")
    text = tools.render(template, messages, plan)
    return engine.tokenize(text, add_special=not _starts_with_bos(engine, text), parse_special=True)


def tool_plan(template, raw_tools: list | None, tool_choice: Any, parallel: bool | None, messages: list[dict]):
    """The request's ToolPlan, or None when it neither offers tools nor carries tool history."""
    history = any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)
    if not raw_tools and tool_choice in (None, "none", "auto") and not history:
        return None
    return tools.ToolPlan.build(template.source, raw_tools, tool_choice, parallel)


def tool_chat_prompt(engine: Engine, template, messages: list[dict], plan: tools.ToolPlan) -> tuple[list[int], dict]:
    """Prompt ids and the SamplingParams fields (grammar, triggers) for a request with tools.

    Runs in a worker thread: building a grammar from the schemas is bounded but not free."""
    ids = chat_prompt(engine, template, messages, plan)
    return ids, plan.sampling(lambda text: engine.tokenize(text, add_special=False, parse_special=True))


def text_prompt(engine: Engine, text: str) -> list[int]:
    """A raw completion prompt: BOS added when the model wants one (and the text has none)."""
    return engine.tokenize(text, add_special=not _starts_with_bos(engine, text), parse_special=True)


def _starts_with_bos(engine: Engine, text: str) -> bool:
    bos = engine.info.bos_token
    return bool(bos and text.startswith(bos))
