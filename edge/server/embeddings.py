"""Embedding routes: OpenAI's POST /v1/embeddings, Ollama's POST /api/embed and its legacy POST /api/embeddings.

Every route returns L2-normalised vectors, the legacy one included (Ollama's legacy route does not
normalise). The request is checked before any model work: an empty list, an empty string, an item of
the wrong type, token ids on a route that takes text, more inputs than EDGE_EMBED_MAX_INPUTS are a
400/413 naming the input. Tokens beyond EDGE_EMBED_MAX_TOKENS (all inputs together, as sent) are a
413. An input longer than the model embeds is cut to its first tokens unless `truncate` is false
(then a 400 saying how long it was); a response says which inputs were cut in `truncated`.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from typing import Annotated, Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge.config import Settings
from edge.engine.base import Embeddings, Engine
from edge.errors import BadRequestError, PayloadTooLargeError
from edge.server.limits import KeepAlive, between
from edge.server.models import Lease, model_for
from edge.server.state import ServerState

Texts = list[str]
TokenLists = list[list[int]]
MAX_DIMENSIONS = 1 << 16


def parse_input(value: Any, *, tokens_allowed: bool) -> Texts | TokenLists:
    """A string, a list of strings, a list of token ids or a list of such lists, as a list of texts or of
    token lists. Raises ValueError (a 400 naming `input`) for anything else."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"must be a string or a list, got {_kind(value)}")
    if not value:
        raise ValueError("is an empty list: send at least one input")
    if all(isinstance(v, str) for v in value):
        empty = next((i for i, v in enumerate(value) if not v), None)
        if empty is not None:
            raise ValueError(f"item {empty} is an empty string: every input needs some text")
        return value
    if tokens_allowed and all(_is_int(v) for v in value):
        return [value]
    if tokens_allowed and all(isinstance(v, list) for v in value):
        for i, ids in enumerate(value):
            if not ids:
                raise ValueError(f"item {i} is an empty list of token ids")
            bad = next((v for v in ids if not _is_int(v)), None)
            if bad is not None:
                raise ValueError(f"item {i} holds {_kind(bad)}: token ids are integers")
        return value
    first = next(i for i, v in enumerate(value) if not isinstance(v, str))
    wanted = "strings, token ids, or lists of token ids" if tokens_allowed else "strings"
    raise ValueError(f"item {first} is {_kind(value[first])}: send {wanted}, not a mix")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _kind(v: Any) -> str:
    return "null" if v is None else f"a {type(v).__name__}"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)  # validators built on first use (openai.py)


class EmbeddingRequest(_Lenient):
    """OpenAI's body; `truncate` is ours (OpenAI refuses a long input, we cut it unless told not to)."""

    model: str = Field("", max_length=512)
    input: Any
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, between(1, MAX_DIMENSIONS)] | None = None
    truncate: bool = True
    user: str | None = Field(None, max_length=512)

    @field_validator("input")
    @classmethod
    def _input(cls, v: Any) -> Texts | TokenLists:
        return parse_input(v, tokens_allowed=True)


class EmbedRequest(_Lenient):
    """Ollama's /api/embed. Without `input` (absent or null) it only loads the model, as Ollama does."""

    model: str = Field(max_length=512)
    input: Any = None
    truncate: bool = True
    dimensions: Annotated[int, between(1, MAX_DIMENSIONS)] | None = None
    keep_alive: KeepAlive = None
    options: dict[str, Any] | None = None

    @field_validator("input")
    @classmethod
    def _input(cls, v: Any) -> Texts | TokenLists | None:
        return None if v is None else parse_input(v, tokens_allowed=False)


class LegacyEmbeddingRequest(_Lenient):
    """Ollama's /api/embeddings: one `prompt`; without one (absent or null) it only loads the model."""

    model: str = Field(max_length=512)
    prompt: str | None = None
    keep_alive: KeepAlive = None
    options: dict[str, Any] | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | None) -> str | None:
        if v is not None and not v:
            raise ValueError("is an empty string: send some text (leave prompt out to only load the model)")
        return v


# -- handlers --------------------------------------------------------------------------------------
async def openai_embeddings(body: EmbeddingRequest, request: Request):
    state: ServerState = request.app.state.edge
    engine = (await model_for(request, body.model)).engine  # after validation: a bad body loads nothing
    result = await _embed(engine, state.settings, body.input, truncate=body.truncate, dimensions=body.dimensions)
    encode = _base64 if body.encoding_format == "base64" else (lambda v: v)
    n = sum(result.n_tokens)
    return JSONResponse(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(result.vectors)],
            "model": engine.info.name,
            "usage": {"prompt_tokens": n, "total_tokens": n},
            **_truncated(result),
        }
    )


async def ollama_embed(body: EmbedRequest, request: Request):
    state: ServerState = request.app.state.edge
    t0 = time.perf_counter_ns()
    lease = await model_for(request, body.model, body.keep_alive)
    engine = lease.engine
    if body.input is None:
        return JSONResponse({"model": engine.info.name, "embeddings": [], **_durations(lease, t0, None)})
    result = await _embed(engine, state.settings, body.input, truncate=body.truncate, dimensions=body.dimensions)
    return JSONResponse(
        {"model": engine.info.name, "embeddings": result.vectors, **_durations(lease, t0, result), **_truncated(result)}
    )


async def ollama_embeddings(body: LegacyEmbeddingRequest, request: Request):
    state: ServerState = request.app.state.edge
    engine = (await model_for(request, body.model, body.keep_alive)).engine
    if body.prompt is None:
        return JSONResponse({"embedding": []})
    result = await _embed(engine, state.settings, [body.prompt], truncate=True, dimensions=None)
    return JSONResponse({"embedding": result.vectors[0]})


# -- shared ----------------------------------------------------------------------------------------
async def _embed(
    engine: Engine, settings: Settings, inputs: Texts | TokenLists, *, truncate: bool, dimensions: int | None
) -> Embeddings:
    if len(inputs) > settings.embed_max_inputs:
        raise PayloadTooLargeError(
            f"{len(inputs)} inputs in one request; this server takes at most {settings.embed_max_inputs} "
            "(EDGE_EMBED_MAX_INPUTS): split the request",
            param="input",
        )
    if isinstance(inputs[0], str):
        token_lists = await asyncio.to_thread(_tokenize, engine, inputs)
    else:
        token_lists = inputs
    total = sum(len(t) for t in token_lists)
    if total > settings.embed_max_tokens:
        raise PayloadTooLargeError(
            f"the inputs hold {total} tokens; this server embeds at most {settings.embed_max_tokens} per request "
            "(EDGE_EMBED_MAX_TOKENS): split the request",
            param="input",
        )
    return await engine.embed(token_lists, truncate=truncate, dimensions=dimensions)


def _tokenize(engine: Engine, texts: Texts) -> TokenLists:
    # special tokens are added (a BERT's [CLS] ... [SEP]) but never parsed out of the client's text
    out = [engine.tokenize(t, add_special=True, parse_special=False) for t in texts]
    empty = next((i for i, t in enumerate(out) if not t), None)
    if empty is not None:
        raise BadRequestError(f"input {empty} has no tokens for this model: send some text", param="input")
    return out


def _base64(vector: list[float]) -> str:
    """OpenAI's base64 encoding_format: little-endian float32 values."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _truncated(result: Embeddings) -> dict:
    """`{"truncated": [{"index", "tokens", "kept"}]}` when an input was cut, else nothing."""
    cut = [
        {"index": i, "tokens": sent, "kept": kept}
        for i, (sent, kept) in enumerate(zip(result.n_tokens_in, result.n_tokens))
        if kept < sent
    ]
    return {"truncated": cut} if cut else {}


def _durations(state: Lease, t0: int, result: Embeddings | None) -> dict:
    return {
        "total_duration": time.perf_counter_ns() - t0,
        "load_duration": state.take_load_ns(),
        "prompt_eval_count": sum(result.n_tokens) if result else 0,
    }
