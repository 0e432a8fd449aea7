"""Ollama-compatible routes: /api/generate, /api/chat, /api/tags, /api/show, /api/ps, /api/version, /.

Streams NDJSON by default (as Ollama); the last object carries done, done_reason and the timings in
nanoseconds. Sampling defaults are Ollama's (temperature 0.8, top_k 40, top_p 0.9, repeat_penalty
1.1), not the OpenAI routes'.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

import edge
from edge.engine import grammar
from edge.engine.base import Delta, Engine, Finish, SamplingParams
from edge.errors import BadRequestError, ContextOverflowError, EdgeError, ollama_error_body
from edge.server import catalog, prompts, streaming
from edge.server.limits import between
from edge.server.state import ServerState

if TYPE_CHECKING:
    from edge.chat.templates import ChatTemplate

log = logging.getLogger("edge.server")
MAX_TEXT = 1 << 22
NDJSON = "application/x-ndjson"


class Options(BaseModel):
    """Ollama's `options`; unknown keys (num_gpu, mirostat...) are logged and ignored, as Ollama does."""

    model_config = ConfigDict(extra="allow")
    num_predict: Annotated[int, between(-2, 1 << 20)] | None = None  # -1: no limit, -2: until the context is full
    temperature: Annotated[float, between(0.0, 10.0)] | None = None
    top_k: int | None = Field(default=None, ge=0, le=1_000_000)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-1, le=2**32 - 1)
    stop: list[str] | None = Field(default=None, max_length=16)
    repeat_penalty: float | None = Field(default=None, ge=0.0, le=10.0)
    repeat_last_n: int | None = Field(default=None, ge=-1, le=1 << 20)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    num_ctx: Annotated[int, between(1, 1 << 24)] | None = None  # bounds this request's window; see _fit_num_ctx


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(max_length=512)
    format: Literal["", "json"] | dict[str, Any] | None = None
    options: Options | None = None
    stream: bool = True
    keep_alive: str | int | float | None = None  # the model stays loaded for the server's lifetime


class GenerateRequest(_Request):
    prompt: str = Field("", max_length=MAX_TEXT)
    system: str | None = Field(default=None, max_length=MAX_TEXT)
    raw: bool = False
    images: list[str] | None = None
    suffix: str | None = None
    template: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field("", max_length=MAX_TEXT)
    images: list[str] | None = None


class ChatRequest(_Request):
    messages: list[Message] = Field(default_factory=list, max_length=10_000)
    tools: list[dict[str, Any]] | None = None


class ShowRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = Field(default=None, max_length=512)
    name: str | None = Field(default=None, max_length=512)  # the older spelling
    verbose: bool = False


# -- generation -------------------------------------------------------------------------------------
async def generate(body: GenerateRequest, request: Request):
    state: ServerState = request.app.state.edge
    t0 = time.perf_counter()
    engine = await asyncio.to_thread(state.engine_for, body.model)
    _refuse(body.images, "images", "this server serves text models only")
    _refuse(body.suffix, "suffix", "suffix (fill-in-the-middle) is not supported")
    _refuse(body.template, "template", "per-request templates are not supported; the model's own template is used")
    if not body.prompt and not body.system:
        return JSONResponse({**_head(state), "response": "", "done": True, "done_reason": "load"})
    prompt = await asyncio.to_thread(_generate_prompt, engine, state.chat_template(), body)
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
    return await _respond(run, body.stream, request, state, lambda text: {"response": text})


async def chat(body: ChatRequest, request: Request):
    state: ServerState = request.app.state.edge
    t0 = time.perf_counter()
    engine = await asyncio.to_thread(state.engine_for, body.model)
    _refuse(body.tools, "tools", "tool calling is not supported by this server yet")
    if any(m.images for m in body.messages):
        raise BadRequestError("this server serves text models only: send messages without images", param="messages")
    if not body.messages:
        return JSONResponse(
            {**_head(state), "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "load"}
        )
    messages = [{"role": m.role, "content": m.content} for m in body.messages]
    prompt = await asyncio.to_thread(prompts.chat_prompt, engine, state.chat_template(), messages)
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
    return await _respond(
        run, body.stream, request, state, lambda text: {"message": {"role": "assistant", "content": text}}
    )


def _generate_prompt(engine: Engine, template: ChatTemplate, body: GenerateRequest) -> list[int]:
    if body.raw or template.is_fallback:
        # raw, or a base model without a chat template: the prompt is the text (system first, if any)
        text = f"{body.system}\n\n{body.prompt}" if body.system and not body.raw else body.prompt
        return prompts.text_prompt(engine, text)
    messages = ([{"role": "system", "content": body.system}] if body.system else []) + [
        {"role": "user", "content": body.prompt}
    ]
    return prompts.chat_prompt(engine, template, messages)


async def _respond(run: streaming.Run, stream: bool, request: Request, state: ServerState, piece):
    if stream:
        return streaming.EventStreamResponse(_ndjson(run, state, piece), NDJSON, run.aclose)
    text, fin = await streaming.collect(run, request)
    return JSONResponse({**_head(state), **piece(text), **_final(fin, run, state)})


async def _ndjson(run: streaming.Run, state: ServerState, piece) -> AsyncGenerator[bytes, None]:
    events = run.events()
    try:
        async for ev in events:
            if isinstance(ev, Delta) and ev.text:
                yield _line({**_head(state), **piece(ev.text), "done": False})
            elif isinstance(ev, Finish):
                yield _line({**_head(state), **piece(""), **_final(ev, run, state)})
    except Exception as exc:
        log.error("stream failed: %s", exc, exc_info=not isinstance(exc, EdgeError))
        yield _line(ollama_error_body(exc))
    finally:
        await events.aclose()


def _line(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def _head(state: ServerState) -> dict:
    return {"model": state.target.name, "created_at": catalog.rfc3339(time.time())}


def _final(fin: Finish, run: streaming.Run, state: ServerState) -> dict:
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
    p = SamplingParams(temperature=0.8, top_k=40, top_p=0.9, min_p=0.0, repeat_penalty=1.1, repeat_last_n=64)
    given: dict[str, Any] = {
        "max_tokens": o.num_predict if o.num_predict and o.num_predict > 0 else None,
        "temperature": o.temperature,
        "top_k": o.top_k,
        "top_p": o.top_p,
        "min_p": o.min_p,
        "seed": None if o.seed in (None, -1) else o.seed,
        "repeat_penalty": o.repeat_penalty,
        "repeat_last_n": o.repeat_last_n,
        "presence_penalty": o.presence_penalty,
        "frequency_penalty": o.frequency_penalty,
        "stop": tuple(s for s in o.stop if s) if o.stop else None,
        "grammar": _grammar(body.format),
    }
    p = dataclasses.replace(p, **{k: v for k, v in given.items() if v is not None})
    return _fit_num_ctx(p, o.num_ctx, n_prompt, n_ctx)


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
    """Every model in the store (as Ollama lists what is on disk), plus the served file if it is elsewhere."""
    state: ServerState = request.app.state.edge
    rows, seen = [], set()
    for e in state.store.list():
        rows.append(_model_row(state, e.name, Path(e.path), e.format, e.size_bytes, e.modified))
        seen.add(Path(e.path).resolve())
    t = state.target
    if t.path.resolve() not in seen:
        rows.insert(0, _model_row(state, t.name, t.path, "gguf", t.size_bytes, t.modified))
    return JSONResponse({"models": rows})


def show(body: ShowRequest, request: Request):
    state: ServerState = request.app.state.edge
    name = body.model or body.name
    if not name:
        raise BadRequestError("send the model name in `model`", param="model")
    path, fmt, modified = _locate(state, name)
    facts = _facts(state, path, fmt)
    params = "\n".join(f"stop {json.dumps(s)}" for s in _stop_tokens(state, path))
    return JSONResponse(
        {
            "modelfile": f"# edge serves this file as is\nFROM {path}\n",
            "parameters": params,
            "template": facts.chat_template or "",
            "details": catalog.details(facts),
            "model_info": facts.model_info,
            "capabilities": ["completion"],
            "modified_at": catalog.rfc3339(modified),
        }
    )


def ps(request: Request):
    state: ServerState = request.app.state.edge
    engine = state.engine
    if engine is None:
        return JSONResponse({"models": []})
    t = state.target
    row = _model_row(state, t.name, t.path, engine.info.format, t.size_bytes, t.modified)
    row.pop("modified_at")
    row.update({"expires_at": "2999-12-31T23:59:59Z", "size_vram": 0, "context_length": engine.info.n_ctx})
    return JSONResponse({"models": [row]})


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
    engine = state.engine
    if engine is not None and path.resolve() == state.target.path.resolve():
        return catalog.facts_from_info(engine.info)
    return catalog.facts_from_file(path, fmt)


def _locate(state: ServerState, name: str) -> tuple[Path, str, float]:
    if state.serves(name):
        return state.target.path, "gguf", state.target.modified
    e = state.store.resolve(name)  # ModelNotFoundError names what is available
    return Path(e.path), e.format, e.modified


def _stop_tokens(state: ServerState, path: Path) -> list[str]:
    engine = state.engine
    if engine is not None and path.resolve() == state.target.path.resolve() and engine.info.eos_token:
        return [engine.info.eos_token]
    return []
