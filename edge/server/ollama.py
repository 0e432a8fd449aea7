"""Ollama-compatible routes: /api/generate, /api/chat, /api/tags, /api/show, /api/ps, /api/version, /.

Streams NDJSON by default (as Ollama); the last object carries done, done_reason and the timings in
nanoseconds. Tool calls (edge.chat.tools) come back in `message.tool_calls` with the arguments as an
object, each in its own streamed line once complete. Sampling defaults are Ollama's (temperature 0.8, top_k 40, top_p 0.9, repeat_penalty
1.1), not the OpenAI routes'.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

import edge
from edge.chat.tools import ToolPlan, ToolStream
from edge.engine import grammar
from edge.engine.base import MAX_TOP_LOGPROBS, Delta, Finish, SamplingParams, TokenLogprob
from edge.errors import BadRequestError, ContextOverflowError, EdgeError, ollama_error_body
from edge.server import catalog, prompts, streaming
from edge.server.limits import KeepAlive, between
from edge.server.models import Lease, model_for
from edge.server.state import ServerState
from edge.store import ADAPTER_SCALE_MAX

log = logging.getLogger("edge.server")
T = TypeVar("T")
MAX_TEXT = 1 << 22
NDJSON = "application/x-ndjson"


class Options(BaseModel):
    """Ollama's `options`; unknown keys (num_gpu, mirostat...) are logged and ignored, as Ollama does."""

    model_config = ConfigDict(extra="allow", defer_build=True)  # validators built on first use (openai.py)
    num_predict: Annotated[int, between(-2, 1 << 20)] | None = None  # -1: no limit, -2: until the context is full
    temperature: Annotated[float, between(0.0, 10.0)] | None = None
    top_k: int | None = Field(None, ge=0, le=1_000_000)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    seed: int | None = Field(None, ge=-1, le=2**32 - 1)
    stop: list[str] | None = Field(None, max_length=16)
    repeat_penalty: float | None = Field(None, ge=0.0, le=10.0)
    repeat_last_n: int | None = Field(None, ge=-1, le=1 << 20)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    num_ctx: Annotated[int, between(1, 1 << 24)] | None = None  # bounds this request's window; see _fit_num_ctx
    # the scale of the LoRA adapter the model name carries (`base+adapter`), instead of the name's
    lora_scale: float | None = Field(None, ge=-ADAPTER_SCALE_MAX, le=ADAPTER_SCALE_MAX, allow_inf_nan=False)


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)
    model: str = Field(max_length=512)
    format: Literal["", "json"] | dict[str, Any] | None = None
    options: Options | None = None
    stream: bool = True
    keep_alive: KeepAlive = None
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=MAX_TOP_LOGPROBS)  # alternatives per token, with logprobs


class GenerateRequest(_Request):
    prompt: str = Field("", max_length=MAX_TEXT)
    system: str | None = Field(None, max_length=MAX_TEXT)
    raw: bool = False
    images: list[str] | None = None
    suffix: str | None = None
    template: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = Field("", max_length=MAX_TEXT)
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = Field(None, max_length=128)
    tool_name: str | None = Field(None, max_length=256)


class ChatRequest(_Request):
    messages: list[Message] = Field(default_factory=list, max_length=10_000)
    tools: list[dict[str, Any]] | None = Field(None, max_length=128)


class ShowRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)
    model: str | None = Field(None, max_length=512)
    name: str | None = Field(None, max_length=512)  # the older spelling
    verbose: bool = False


# -- generation -------------------------------------------------------------------------------------
async def generate(body: GenerateRequest, request: Request):
    state: ServerState = request.app.state.edge
    t0 = time.perf_counter()
    _refuse(body.images, "images", "this server serves text models only")
    _refuse(body.suffix, "suffix", "suffix (fill-in-the-middle) is not supported")
    _refuse(body.template, "template", "per-request templates are not supported; the model's own template is used")
    if not body.prompt and not body.system:
        return await _load_or_unload(state, body, {"response": ""})
    lease = await model_for(request, body.model, body.keep_alive, _lora_scale(body))  # after validation
    engine = lease.engine
    prompt = await asyncio.to_thread(_generate_prompt, lease, body)
    run = await streaming.start(
        engine,
        prompt,
        _params(body, len(prompt), engine.info.n_ctx),
        request,
        state.metrics,
        t0,
        state.settings.request_timeout,
        stream=body.stream,
    )
    return await _respond(run, body.stream, request, lease, lambda text: {"response": text})


async def chat(body: ChatRequest, request: Request):
    state: ServerState = request.app.state.edge
    t0 = time.perf_counter()
    if any(m.images for m in body.messages):
        raise BadRequestError("this server serves text models only: send messages without images", param="messages")
    if not body.messages:
        return await _load_or_unload(state, body, {"message": {"role": "assistant", "content": ""}})
    messages = [_message(m) for m in body.messages]
    lease = await model_for(request, body.model, body.keep_alive, _lora_scale(body))  # after validation
    engine = lease.engine
    plan = prompts.tool_plan(lease.template, body.tools, None, None, messages)
    constrained: dict = {}
    if plan is None:
        prompt = await asyncio.to_thread(prompts.chat_prompt, engine, lease.template, messages)
    else:
        prompt, constrained = await asyncio.to_thread(prompts.tool_chat_prompt, engine, lease.template, messages, plan)
        if constrained and body.format:
            raise BadRequestError("format cannot be combined with tools", param="format")
    params = dataclasses.replace(_params(body, len(prompt), engine.info.n_ctx), **constrained)
    run = await streaming.start(
        engine, prompt, params, request, state.metrics, t0, state.settings.request_timeout, stream=body.stream
    )
    if plan is not None and plan.active:
        return await _respond_tools(run, body.stream, request, lease, plan)
    return await _respond(
        run, body.stream, request, lease, lambda text: {"message": {"role": "assistant", "content": text}}
    )


def _message(m: Message) -> dict:
    out: dict[str, Any] = {"role": m.role, "content": m.content or ""}
    if m.tool_calls:
        out["tool_calls"] = m.tool_calls
    if m.tool_name:
        out["tool_name"] = m.tool_name
    return out


def _tool_message(content: str, calls) -> dict:
    out: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        out["tool_calls"] = [{"function": {"name": c.name, "arguments": c.arguments}} for c in calls]
    return out


async def _respond_tools(run: streaming.Run, stream: bool, request: Request, state: Lease, plan: ToolPlan):
    if stream:
        return streaming.EventStreamResponse(_ndjson_tools(run, state, plan), NDJSON, run.aclose)
    text, fin = await streaming.collect(run, request)
    parsed = plan.parse(text)
    message = _tool_message(parsed.content, plan.calls(parsed))
    return JSONResponse({**_head(state), "message": message, **_final(fin, run, state)})


def _tool_messages(events: list[tuple]) -> list[dict]:
    """Ollama's streamed messages: content as it comes, each call whole once complete (the ollama
    client reads `arguments` as an object, never in fragments)."""
    out = []
    for event in events:
        if event[0] == "content":
            out.append(_tool_message(event[1], None))
        elif event[0] == "call":
            out.append(_tool_message("", [event[2]]))
    return out


async def _ndjson_tools(run: streaming.Run, state: Lease, plan: ToolPlan) -> AsyncIterator[bytes]:
    """Content as it becomes certain, each call in its own line once complete, then the closing line."""
    events, calls = run.events(), ToolStream(plan)
    try:
        async for ev in events:
            if isinstance(ev, Delta) and ev.text:
                for msg in _tool_messages(calls.feed(ev.text)):
                    yield _line({**_head(state), "message": msg, "done": False})
            elif isinstance(ev, Finish):
                for msg in _tool_messages(calls.finish()):
                    yield _line({**_head(state), "message": msg, "done": False})
                yield _line({**_head(state), "message": _tool_message("", None), **_final(ev, run, state)})
    except Exception as exc:
        log.error("stream failed: %s", exc, exc_info=not isinstance(exc, EdgeError))
        yield _line(ollama_error_body(exc))
    finally:
        await events.aclose()


async def _load_or_unload(state: ServerState, body: _Request, piece: dict) -> JSONResponse:
    """Ollama's empty request: load the model (and keep it for keep_alive), or with keep_alive 0
    unload it; a pinned model stays, and the answer says "load"."""
    if body.keep_alive == 0:
        target, unloaded = await state.models.unload(body.model)
        name, reason = target.name, "unload" if unloaded else "load"
    else:
        async with state.models.lease(body.model, body.keep_alive) as lease:
            name, reason = lease.name, "load"
    return JSONResponse(
        {"model": name, "created_at": catalog.rfc3339(time.time()), **piece, "done": True, "done_reason": reason}
    )


def _generate_prompt(state: Lease, body: GenerateRequest) -> list[int]:
    engine = state.engine
    if body.raw or state.template.is_fallback:
        # raw, or a base model without a chat template: the prompt is the text (system first, if any)
        text = f"{body.system}\n\n{body.prompt}" if body.system and not body.raw else body.prompt
        return prompts.text_prompt(engine, text)
    messages = ([{"role": "system", "content": body.system}] if body.system else []) + [
        {"role": "user", "content": body.prompt}
    ]
    return prompts.chat_prompt(engine, state.template, messages)


async def _respond(run: streaming.Run, stream: bool, request: Request, state: Lease, piece):
    top = run.params.top_logprobs if run.params.logprobs else None
    if stream:
        return streaming.EventStreamResponse(_ndjson(run, state, piece, top), NDJSON, run.aclose)
    text, fin = await streaming.collect(run, request)
    logprobs = {"logprobs": _logprobs(run.logprobs, top)} if top is not None else {}
    return JSONResponse({**_head(state), **piece(text), **logprobs, **_final(fin, run, state)})


async def _ndjson(run: streaming.Run, state: Lease, piece, top: int | None = None) -> AsyncIterator[bytes]:
    events = run.events()
    try:
        async for ev in events:
            if isinstance(ev, Delta) and (ev.text or ev.logprobs):
                logprobs = {"logprobs": _logprobs(ev.logprobs, top)} if top is not None else {}
                yield _line({**_head(state), **piece(ev.text), **logprobs, "done": False})
            elif isinstance(ev, Finish):
                yield _line({**_head(state), **piece(""), **_final(ev, run, state)})
    except Exception as exc:
        log.error("stream failed: %s", exc, exc_info=not isinstance(exc, EdgeError))
        yield _line(ollama_error_body(exc))
    finally:
        await events.aclose()


def _logprobs(entries: Sequence[TokenLogprob], top: int) -> list[dict]:
    """Ollama's `logprobs`: token, logprob, bytes (left out when empty) and, when asked, top_logprobs."""

    def one(e: TokenLogprob) -> dict:
        return {"token": e.text, "logprob": e.logprob, **({"bytes": list(e.piece)} if e.piece else {})}

    if not top:
        return [one(e) for e in entries]
    return [{**one(e), "top_logprobs": [one(t) for t in e.top]} for e in entries]


def _line(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def _head(state: Lease) -> dict:
    return {"model": state.target.name, "created_at": catalog.rfc3339(time.time())}


def _final(fin: Finish, run: streaming.Run, state: Lease) -> dict:
    """Ollama's closing statistics; prompt_eval_count counts only tokens evaluated (not reused from cache).

    load_duration: the model's load time on the first answer after loading (where Ollama would have
    loaded it for the request), 0 afterwards, as Ollama reports for a model already in memory."""
    return {
        "done": True,
        "done_reason": "length" if fin.reason == "length" else "stop",
        "total_duration": run.elapsed_ns(),
        "load_duration": state.take_load_ns(),
        "prompt_eval_count": fin.prompt_tokens - fin.cached_tokens,
        "prompt_eval_duration": fin.prompt_eval_ns,
        "eval_count": fin.completion_tokens,
        "eval_duration": fin.eval_ns,
    }


def _params(body: _Request, n_prompt: int, n_ctx: int) -> SamplingParams:
    o = body.options or Options()
    if o.model_extra:
        log.warning("ignoring Ollama options this server does not implement: %s", ", ".join(sorted(o.model_extra)))
    # an option left out takes Ollama's default (top_p 0.9, min_p 0 and repeat_penalty 1.1 differ from the engine's)
    p = SamplingParams(
        max_tokens=o.num_predict if o.num_predict and o.num_predict > 0 else None,
        temperature=_or(o.temperature, 0.8),
        top_k=_or(o.top_k, 40),
        top_p=_or(o.top_p, 0.9),
        min_p=_or(o.min_p, 0.0),
        seed=None if o.seed in (None, -1) else o.seed,
        repeat_penalty=_or(o.repeat_penalty, 1.1),
        repeat_last_n=_or(o.repeat_last_n, 64),
        presence_penalty=_or(o.presence_penalty, 0.0),
        frequency_penalty=_or(o.frequency_penalty, 0.0),
        stop=tuple(s for s in o.stop if s) if o.stop else (),
        grammar=_grammar(body.format),
        logprobs=body.logprobs,
        top_logprobs=body.top_logprobs if body.logprobs else 0,
    )
    return _fit_num_ctx(p, o.num_ctx, n_prompt, n_ctx)


def _lora_scale(body: _Request) -> float | None:
    return body.options.lora_scale if body.options is not None else None


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


def _fit_num_ctx(p: SamplingParams, num_ctx: int | None, n_prompt: int, n_ctx: int) -> SamplingParams:
    """`num_ctx` bounds this request's window (prompt + answer) within the context loaded at start.

    A larger num_ctx than loaded cannot be honoured without a reload: the loaded one is used (logged)."""
    if num_ctx is None:
        return p
    if num_ctx > n_ctx:
        log.info("num_ctx %d asked; this server loaded %d tokens per slot (edge serve --ctx)", num_ctx, n_ctx)
        return p
    if n_prompt >= num_ctx:
        raise ContextOverflowError(
            f"the prompt has {n_prompt} tokens, options.num_ctx is {num_ctx}: raise num_ctx or shorten the prompt",
            param="options.num_ctx",
        )
    room = num_ctx - n_prompt
    return dataclasses.replace(p, max_tokens=min(p.max_tokens or room, room))


def _grammar(fmt) -> str | None:
    if not fmt:
        return None
    if fmt == "json":
        return grammar.JSON_OBJECT_GBNF
    return grammar.json_schema_to_gbnf(fmt)


def _refuse(value, param: str, why: str) -> None:
    if value:
        raise BadRequestError(f"{why}: send the request without `{param}`", param=param)


# -- model listing --------------------------------------------------------------------------------
def tags(request: Request):
    """Every model in the store (as Ollama lists what is on disk), plus a kept file from elsewhere:
    each can be asked for by name."""
    state: ServerState = request.app.state.edge
    rows = [_model_row(state, m.name, m.path, m.format, m.size_bytes, m.modified) for m in catalog.servable(state)]
    return JSONResponse({"models": rows})


def show(body: ShowRequest, request: Request):
    state: ServerState = request.app.state.edge
    name = body.model or body.name
    if not name:
        raise BadRequestError("send the model name in `model`", param="model")
    t = state.models.resolve(name)  # ModelNotFoundError names what is available
    path, fmt, modified = t.path, "onnx" if t.path.is_dir() else "gguf", t.modified
    facts = _facts(state, path, fmt)
    params = "\n".join(f"stop {json.dumps(s)}" for s in _stop_tokens(state, path))
    modelfile, details, info = f"# edge serves this file as is\nFROM {path}\n", catalog.details(facts), facts.model_info
    adapters = []
    if t.adapter is not None:  # Ollama's Modelfile spelling: FROM the base, ADAPTER the LoRA
        modelfile += f"ADAPTER {t.adapter}\n"
        details = {**details, "parent_model": t.base_name or ""}
        info = {**info, **catalog.adapter_facts(t.adapter, t.adapter_scale, t.base_name)}
        adapters = [{"id": 0, "path": str(t.adapter), "scale": t.adapter_scale}]  # llama-server's /lora-adapters
    return JSONResponse(
        {
            "modelfile": modelfile,
            "adapters": adapters,
            "parameters": params,
            "template": facts.chat_template or "",
            "details": details,
            "model_info": info,
            "capabilities": catalog.capabilities(facts),
            "tool_format": catalog.tool_format(facts),
            "modified_at": catalog.rfc3339(modified),
        }
    )


def ps(request: Request):
    """The models in memory: size is the planner's estimate of what each takes (CPU: size_vram 0);
    `state` (loaded/loading), `requests_in_flight` and `pinned` are edge's additions."""
    state: ServerState = request.app.state.edge
    rows = []
    for m in state.models.in_memory():
        t = m.target
        fmt = "onnx" if t.path.is_dir() else "gguf"
        row = _model_row(state, t.name, t.path, fmt, t.size_bytes, t.modified)
        row.pop("modified_at")
        info = m.row()
        row.update(
            size=m.need_bytes,
            size_vram=0,
            expires_at=info["expires_at"],
            context_length=info["context_length"],
            state=info["state"],
            requests_in_flight=info["requests_in_flight"],
            pinned=m.pinned,
        )
        rows.append(row)
    return JSONResponse({"models": sorted(rows, key=lambda r: r["name"])})


async def version(request: Request):
    return JSONResponse({"version": edge.__version__})


async def root(request: Request):
    """Ollama clients probe GET / and HEAD / for this exact text."""
    if request.method == "HEAD":
        return Response(status_code=200, media_type="text/plain; charset=utf-8")
    return PlainTextResponse("Ollama is running")


async def pull(request: Request):
    raise BadRequestError(
        "edge never downloads models: copy a .gguf file into the model store "
        "(EDGE_HOME/models or --models DIR), or map the name in the alias file"
    )


def _model_row(state: ServerState, name: str, path: Path, fmt: str, size: int, modified: float) -> dict:
    facts = _facts(state, path, fmt)
    digest = state.digest(path, size, modified) if path.is_file() else ""
    return {
        "name": name,
        "model": name,
        "modified_at": catalog.rfc3339(modified),
        "size": size,
        "digest": digest,
        "details": catalog.details(facts),
    }


def _facts(state: ServerState, path: Path, fmt: str) -> catalog.FileFacts:
    info = state.models.loaded_info(path)
    return catalog.facts_from_info(info) if info is not None else catalog.facts_from_file(path, fmt)


def _stop_tokens(state: ServerState, path: Path) -> list[str]:
    info = state.models.loaded_info(path)
    return [info.eos_token] if info is not None and info.eos_token else []
