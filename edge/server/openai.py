"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models.

Request models carry the bounds; anything the server cannot honour (n > 1, logit_bias...) is a
clear 400 rather than a silent ignore. Tool calls (edge.chat.tools) come back as
`message.tool_calls`, streamed as `delta.tool_calls` by index: the call's id, type and name first,
then its arguments. Fields OpenAI clients send that do not change the output (user, metadata,
store...) are accepted and ignored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from edge.chat.tools import ToolCall, ToolPlan, ToolStream
from edge.engine import grammar
from edge.engine.base import MAX_TOP_LOGPROBS, Delta, Finish, SamplingParams, TokenLogprob
from edge.errors import BadRequestError, EdgeError, openai_error_body
from edge.server import catalog, prompts, streaming
from edge.server.limits import between
from edge.server.models import model_for
from edge.server.state import ServerState
from edge.store import ADAPTER_SCALE_MAX

log = logging.getLogger("edge.server")
T = TypeVar("T")
MAX_TOKENS = 1 << 20
MAX_TEXT = 1 << 22  # characters in one prompt or message (the body limit applies first)


class _Lenient(BaseModel):
    # defer_build: a model's validator is built when a request first needs it, not as the server
    # starts (building every route's models at import is a tenth of a cold start)
    model_config = ConfigDict(extra="ignore", defer_build=True)


class ContentPart(_Lenient):
    type: str = Field(max_length=64)
    text: str | None = Field(None, max_length=MAX_TEXT)


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = Field(None, max_length=MAX_TEXT)
    name: str | None = Field(None, max_length=256)
    tool_calls: list[dict[str, Any]] | None = Field(None, max_length=128)
    tool_call_id: str | None = Field(None, max_length=256)


class StreamOptions(_Lenient):
    include_usage: bool = False


class JsonSchemaSpec(_Lenient):
    name: str = Field("response", max_length=256)
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


LoraScale = Annotated[float, Field(ge=-ADAPTER_SCALE_MAX, le=ADAPTER_SCALE_MAX, allow_inf_nan=False)]


class LoraEntry(_Lenient):
    """One entry of llama-server's `lora` field: {"id": index of the adapter, "scale": its scale}."""

    id: int = Field(ge=0, le=1 << 16)
    scale: LoraScale


class _Sampling(_Lenient):
    model: str = Field("", max_length=512)
    max_tokens: Annotated[int, between(1, MAX_TOKENS)] | None = None
    temperature: Annotated[float, between(0.0, 2.0)] | None = None
    top_p: Annotated[float, between(0.0, 1.0)] | None = None
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-1, le=2**32 - 1)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None
    # llama.cpp server extensions, accepted by many OpenAI-compatible clients
    top_k: int | None = Field(None, ge=0, le=1_000_000)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(None, ge=0.0, le=10.0)
    ignore_eos: bool = False  # generate past end-of-generation tokens, up to max_tokens (benchmarks)
    # the scale of the LoRA adapter the model name carries (`base+adapter`), instead of the name's:
    # `lora_scale`, or llama-server's `lora: [{"id": 0, "scale": s}]` (id 0 is the name's adapter)
    lora_scale: LoraScale | None = None
    lora: list[LoraEntry] | None = Field(None, max_length=1)

    def wanted_lora_scale(self) -> float | None:
        """The body's adapter scale (None: the name's); a 400 for an adapter the name does not carry."""
        if not self.lora:
            return self.lora_scale
        if self.lora_scale is not None:
            raise BadRequestError("send lora_scale or lora, not both", param="lora")
        if self.lora[0].id != 0:
            raise BadRequestError(
                "lora[0].id must be 0: a request applies the one adapter its model name carries (base+adapter)",
                param="lora",
            )
        return self.lora[0].scale

    def wanted_logprobs(self) -> tuple[bool, int]:
        """(per-token log probabilities asked, alternatives per token); a 400 for a combination that
        cannot be honoured."""
        return False, 0


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=10_000)
    max_completion_tokens: Annotated[int, between(1, MAX_TOKENS)] | None = None
    tools: list[dict[str, Any]] | None = Field(None, max_length=128)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    def wanted_logprobs(self) -> tuple[bool, int]:
        if self.top_logprobs is not None and not self.logprobs:
            raise BadRequestError("top_logprobs needs logprobs: true", param="top_logprobs")
        return bool(self.logprobs), self.top_logprobs or 0


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(max_length=MAX_TEXT)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=128)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)  # OpenAI allows 5; we allow as many as chat

    def wanted_logprobs(self) -> tuple[bool, int]:
        if self.logprobs is not None and self.echo:
            raise BadRequestError(
                "echo with logprobs would need the prompt's log probabilities, which this server does not "
                "compute; send echo or logprobs, not both",
                param="logprobs",
            )
        return self.logprobs is not None, self.logprobs or 0


# -- handlers --------------------------------------------------------------------------------------
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state: ServerState = request.app.state.edge
    t0 = time.perf_counter()
    _refuse_unsupported(body)
    messages = [_message(m) for m in body.messages]
    lease = await model_for(request, body.model, lora_scale=body.wanted_lora_scale())  # after validation
    engine = lease.engine
    plan = prompts.tool_plan(lease.template, body.tools, body.tool_choice, body.parallel_tool_calls, messages)
    params = _params(body, body.max_completion_tokens or body.max_tokens)
    if plan is None:
        prompt = await asyncio.to_thread(prompts.chat_prompt, engine, lease.template, messages)
    else:
        prompt, constrained = await asyncio.to_thread(prompts.tool_chat_prompt, engine, lease.template, messages, plan)
        if constrained and body.response_format and body.response_format.type != "text":
            raise BadRequestError("response_format cannot be combined with tools", param="response_format")
        params = dataclasses.replace(params, **constrained)
    run = await streaming.start(
        engine, prompt, params, request, state.metrics, t0, state.settings.request_timeout, stream=bool(body.stream)
    )
    ident, created, name = f"chatcmpl-{secrets.token_hex(12)}", int(time.time()), lease.name
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _chat_chunks(run, ident, created, name, include_usage, plan)
        return streaming.EventStreamResponse(_sse(chunks), "text/event-stream", run.aclose)
    text, fin = await streaming.collect(run, request)
    message, finish = _reply(text, fin, plan)
    return JSONResponse(
        {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": name,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": _chat_logprobs(run.logprobs) if run.params.logprobs else None,
                    "finish_reason": finish,
                }
            ],
            "usage": _usage(fin),
            "system_fingerprint": _fingerprint(name),
        }
    )


async def completions(body: CompletionRequest, request: Request):
    state: ServerState = request.app.state.edge
    t0 = time.perf_counter()
    _refuse_unsupported(body)
    if body.best_of not in (None, 1):
        raise BadRequestError("best_of > 1 is not supported: send one request per completion", param="best_of")
    if body.suffix:
        raise BadRequestError("suffix (fill-in-the-middle) is not supported by this server", param="suffix")
    text_in = _single_prompt(body.prompt)
    lease = await model_for(request, body.model, lora_scale=body.wanted_lora_scale())  # after validation
    engine = lease.engine
    prompt = await asyncio.to_thread(prompts.text_prompt, engine, text_in)
    run = await streaming.start(
        engine,
        prompt,
        _params(body, body.max_tokens),
        request,
        state.metrics,
        t0,
        state.settings.request_timeout,
        stream=bool(body.stream),
    )
    ident, created, name = f"cmpl-{secrets.token_hex(12)}", int(time.time()), engine.info.name
    prefix = text_in if body.echo else ""
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _completion_chunks(run, ident, created, name, include_usage, prefix)
        return streaming.EventStreamResponse(_sse(chunks), "text/event-stream", run.aclose)
    text, fin = await streaming.collect(run, request)
    return JSONResponse(
        {
            "id": ident,
            "object": "text_completion",
            "created": created,
            "model": name,
            "choices": [
                {
                    "index": 0,
                    "text": prefix + text,
                    "logprobs": _legacy_logprobs(run.logprobs) if run.params.logprobs else None,
                    "finish_reason": _finish_reason(fin),
                }
            ],
            "usage": _usage(fin),
            "system_fingerprint": _fingerprint(name),
        }
    )


async def list_models(request: Request):
    """Every model a request may name: the store's, and a file `edge serve PATH` keeps outside it."""
    state: ServerState = request.app.state.edge
    rows = await asyncio.to_thread(catalog.servable, state)
    data = []
    for m in rows:
        row = {"id": m.name, "object": "model", "created": int(m.modified), "owned_by": "edge"}
        try:  # what /api/show says: "tools" when the template takes tools
            row["capabilities"] = catalog.capabilities(catalog.facts_from_file(m.path, m.format))
        except EdgeError:
            pass
        data.append(row)
    return JSONResponse({"object": "list", "data": data})


# -- streaming bodies --------------------------------------------------------------------------------
async def _chat_chunks(
    run: streaming.Run, ident: str, created: int, name: str, include_usage: bool, plan: ToolPlan | None = None
) -> AsyncIterator[dict]:
    base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": name}
    extra = {"usage": None} if include_usage else {}
    yield {
        **base,
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        ],
        **extra,
    }
    calls = ToolStream(plan) if plan is not None and plan.active else None
    async for ev in run.events():
        if isinstance(ev, Delta) and (ev.text or ev.logprobs):
            lp = _chat_logprobs(ev.logprobs) if run.params.logprobs else None
            deltas = (_deltas(calls, ev.text) if ev.text else []) if calls else [{"content": ev.text}]
            if not deltas and lp is not None:
                deltas = [{}]  # the text went into a tool call: its tokens' logprobs still go out
            for i, delta in enumerate(deltas):
                yield {
                    **base,
                    "choices": [
                        {"index": 0, "delta": delta, "logprobs": lp if i == 0 else None, "finish_reason": None}
                    ],
                    **extra,
                }
        elif isinstance(ev, Finish):
            finish = _finish_reason(ev)
            if calls:
                for delta in _deltas(calls, None):
                    yield {
                        **base,
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
                        **extra,
                    }
                finish = "tool_calls" if calls.calls and ev.reason != "length" else finish
            yield {
                **base,
                "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}],
                **extra,
            }
            if include_usage:
                yield {**base, "choices": [], "usage": _usage(ev)}


async def _completion_chunks(
    run: streaming.Run, ident: str, created: int, name: str, include_usage: bool, prefix: str
) -> AsyncIterator[dict]:
    base = {"id": ident, "object": "text_completion", "created": created, "model": name}
    extra = {"usage": None} if include_usage else {}
    if prefix:
        yield {**base, "choices": [{"index": 0, "text": prefix, "logprobs": None, "finish_reason": None}], **extra}
    async for ev in run.events():
        if isinstance(ev, Delta) and (ev.text or ev.logprobs):
            lp = _legacy_logprobs(ev.logprobs) if run.params.logprobs else None
            yield {**base, "choices": [{"index": 0, "text": ev.text, "logprobs": lp, "finish_reason": None}], **extra}
        elif isinstance(ev, Finish):
            yield {
                **base,
                "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": _finish_reason(ev)}],
                **extra,
            }
            if include_usage:
                yield {**base, "choices": [], "usage": _usage(ev)}


async def _sse(chunks: AsyncIterator[dict]) -> AsyncIterator[bytes]:
    """SSE events; an error after the headers went out becomes an `{"error": ...}` event (the SDK raises it)."""
    try:
        async for chunk in chunks:
            yield _event(chunk)
    except Exception as exc:
        log.error("stream failed: %s", exc, exc_info=not isinstance(exc, EdgeError))
        yield _event(openai_error_body(exc))
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    yield b"data: [DONE]\n\n"


def _event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


# -- tool calls ----------------------------------------------------------------------------------------
def _message(m: ChatMessage) -> dict:
    out: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": _text_of(m)}
    if m.tool_calls:
        out["tool_calls"] = m.tool_calls
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.role == "tool" and m.name:
        out["name"] = m.name
    return out


def _call_json(call: ToolCall) -> dict:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments_json}}


def _reply(text: str, fin: Finish, plan: ToolPlan | None) -> tuple[dict, str]:
    """The assistant message and finish_reason; calls parsed out of the text when tools were offered."""
    if plan is None or not plan.active:
        return {"role": "assistant", "content": text}, _finish_reason(fin)
    parsed = plan.parse(text)
    calls = plan.calls(parsed)
    if not calls:
        return {"role": "assistant", "content": parsed.content}, _finish_reason(fin)
    message = {
        "role": "assistant",
        "content": parsed.content.strip() or None,
        "tool_calls": [_call_json(c) for c in calls],
    }
    return message, "length" if fin.reason == "length" else "tool_calls"


def _deltas(stream: ToolStream, text: str | None) -> list[dict]:
    """Stream deltas for new text (None: the end): content, or a call as {id, type, name}, then its
    arguments in fragments as the model writes them."""
    out: list[dict] = []
    for event in stream.feed(text) if text is not None else stream.finish():
        kind = event[0]
        if kind == "content":
            out.append({"content": event[1]})
        elif kind == "start":
            _, index, call_id, name = event
            head = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
            out.append({"tool_calls": [head]})
        elif kind == "args":
            out.append({"tool_calls": [{"index": event[1], "function": {"arguments": event[2]}}]})
    return out


# -- mapping -------------------------------------------------------------------------------------------
def _params(body: _Sampling, max_tokens: int | None) -> SamplingParams:
    d = SamplingParams()  # the engine's defaults stand for what the request leaves out
    logprobs, top = body.wanted_logprobs()
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=_or(body.temperature, d.temperature),
        top_p=_or(body.top_p, d.top_p),
        top_k=_or(body.top_k, d.top_k),
        min_p=_or(body.min_p, d.min_p),
        repeat_penalty=_or(body.repeat_penalty, d.repeat_penalty),
        presence_penalty=_or(body.presence_penalty, d.presence_penalty),
        frequency_penalty=_or(body.frequency_penalty, d.frequency_penalty),
        seed=None if body.seed in (None, -1) else body.seed,
        stop=_or(_stops(body.stop), d.stop),
        grammar=_grammar(body.response_format),
        logprobs=logprobs,
        top_logprobs=top if logprobs else d.top_logprobs,
        ignore_eos=body.ignore_eos,
    )


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


def _chat_logprobs(entries: Sequence[TokenLogprob]) -> dict:
    """choices[].logprobs of a chat completion (or of one streamed chunk): one entry per token."""

    def one(e: TokenLogprob) -> dict:
        return {"token": e.text, "logprob": e.logprob, "bytes": list(e.piece)}

    return {"content": [{**one(e), "top_logprobs": [one(t) for t in e.top]} for e in entries], "refusal": None}


def _legacy_logprobs(entries: Sequence[TokenLogprob]) -> dict:
    """choices[].logprobs of a (legacy) completion: parallel lists, offsets in characters of the answer."""
    return {
        "tokens": [e.text for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [_top_by_text(e) for e in entries],
        "text_offset": [e.offset for e in entries],
    }


def _top_by_text(e: TokenLogprob) -> dict[str, float]:
    """The best tokens by text, best first, then the chosen one if it is not among them (so up to
    logprobs + 1 keys, as OpenAI documents); of two tokens with the same text the likelier stays."""
    top: dict[str, float] = {}
    for t in e.top:
        top.setdefault(t.text, t.logprob)
    top.setdefault(e.text, e.logprob)
    return top


def _refuse_unsupported(body: _Sampling) -> None:
    if body.n != 1:
        raise BadRequestError(
            f"n={body.n} is not supported: this server returns one choice per request; "
            "send n separate requests (they run in parallel slots)",
            param="n",
        )
    if body.logit_bias:
        raise BadRequestError("logit_bias is not supported by this server", param="logit_bias")


def _stops(stop: str | list[str] | None) -> tuple[str, ...] | None:
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > 16:
        raise BadRequestError("at most 16 stop strings", param="stop")
    for s in stops:
        if not s or len(s) > 256:
            raise BadRequestError("each stop string must have 1 to 256 characters", param="stop")
    return tuple(stops)


def _grammar(fmt: ResponseFormat | None) -> str | None:
    return grammar.grammar_for_response_format(fmt.model_dump(by_alias=True) if fmt else None)


def _text_of(m: ChatMessage) -> str:
    if m.content is None or isinstance(m.content, str):
        return m.content or ""
    for part in m.content:
        if part.type != "text":
            raise BadRequestError(
                f"content parts of type {part.type!r} are not supported (text only)", param="messages"
            )
    return "".join(p.text or "" for p in m.content)


def _single_prompt(prompt: str | list[str]) -> str:
    if isinstance(prompt, str):
        return prompt
    if len(prompt) != 1:
        raise BadRequestError(
            "send exactly one prompt per request (a list of several is batching, not supported)", param="prompt"
        )
    return prompt[0]


def _finish_reason(fin: Finish) -> str:
    return "length" if fin.reason == "length" else "stop"


def _usage(fin: Finish) -> dict:
    return {
        "prompt_tokens": fin.prompt_tokens,
        "completion_tokens": fin.completion_tokens,
        "total_tokens": fin.prompt_tokens + fin.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": fin.cached_tokens},
    }


def _fingerprint(name: str) -> str:
    return f"edge-{name}"
