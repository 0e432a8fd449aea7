"""Turning API messages and prompts into token ids, the same way for OpenAI and Ollama routes."""

from __future__ import annotations

from edge.engine.base import Engine
from edge.errors import BadRequestError


def chat_prompt(engine: Engine, template, messages: list[dict]) -> list[int]:
    """Render with the model's chat template, then tokenize without a second BOS.

    Templates that write the BOS text themselves (Llama 3: "<|begin_of_text|>...") would get a
    second BOS if tokenized with add_special=True; llama.cpp warns about exactly that.
    """
    if not messages:
        raise BadRequestError("messages is empty: send at least one message", param="messages")
    text = template.render(messages, add_generation_prompt=True)
    return engine.tokenize(text, add_special=not _starts_with_bos(engine, text), parse_special=True)


def text_prompt(engine: Engine, text: str) -> list[int]:
    """A raw completion prompt: BOS added when the model wants one (and the text has none)."""
    return engine.tokenize(text, add_special=not _starts_with_bos(engine, text), parse_special=True)


def _starts_with_bos(engine: Engine, text: str) -> bool:
    bos = engine.info.bos_token
    return bool(bos and text.startswith(bos))
