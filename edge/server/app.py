"""The FastAPI app: factory, middleware (request metrics; Host, Origin and body limits from
edge.server.security), auth, the route table (one function), and the one exception handler that turns
edge.errors into each API's shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Callable

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from edge.config import Settings
from edge.errors import (
    AuthenticationError,
    BadRequestError,
    EdgeError,
    NotFoundError,
    http_status_for,
    ollama_error_body,
    openai_error_body,
)
from edge.server import embeddings, ollama, openai
from edge.server import metrics as metrics_mod
from edge.server import models as models_mod
from edge.server.security import SecurityMiddleware
from edge.server.state import ServerState, Target, resolve_target
from edge.server.streaming import ClientGone

log = logging.getLogger("edge.server")


def routes(state: ServerState) -> list[tuple[str, str, Callable, bool]]:
    """THE route table: (method, path, handler, needs_api_key)."""
    return [
        ("GET", "/health", health, False),
        ("GET", "/metrics", metrics, True),
        ("POST", "/v1/chat/completions", openai.chat_completions, True),
        ("POST", "/v1/completions", openai.completions, True),
        ("GET", "/v1/models", openai.list_models, True),
        ("POST", "/v1/embeddings", embeddings.openai_embeddings, True),
        ("POST", "/api/embed", embeddings.ollama_embed, True),
        ("POST", "/api/embeddings", embeddings.ollama_embeddings, True),
        ("POST", "/api/generate", ollama.generate, True),
        ("POST", "/api/chat", ollama.chat, True),
        ("GET", "/api/tags", ollama.tags, True),
        ("POST", "/api/show", ollama.show, True),
        ("GET", "/api/ps", ollama.ps, True),
        ("GET", "/api/version", ollama.version, True),
        ("POST", "/api/pull", ollama.pull, True),
        ("GET", "/", ollama.root, True),
        ("HEAD", "/", ollama.root, True),
    ]


def _quiet_deferred_body_schemas() -> None:
    """FastAPI wraps each route's body type in a TypeAdapter of `Annotated[Model, Body(alias=...)]`, whose
    alias pydantic warns has no effect there; FastAPI silences that warning while it makes the adapter.
    A deferred model's schema is made later, at the first request, outside that silence, so the
    server's first request would print the warning: silence it for the process as FastAPI does."""
    import warnings

    try:
        from pydantic.warnings import UnsupportedFieldAttributeWarning
    except ImportError:  # pydantic without this warning
        return
    warnings.filterwarnings("ignore", category=UnsupportedFieldAttributeWarning)


def create_app(
    settings: Settings,
    *,
    store=None,
    target: Target | None = None,
    opener=None,
    load_in_background: bool = True,
    budget=None,
    early=None,
) -> FastAPI:
    """Resolve the models to keep loaded now (a wrong name fails before any socket is bound): the one
    `settings.model` names (or `target`), then `settings.pin`; they load after startup. Every other
    model in the store loads when a request names it (edge.server.models)."""
    _quiet_deferred_body_schemas()
    if store is None:
        from edge.store import ModelStore

        store = ModelStore(settings.home, models_dir=settings.models_dir)
    if opener is None:
        from edge.engine import open_engine as opener
    preload = [target] if target is not None else [resolve_target(settings, store)] if settings.model else []
    preload += [models_mod.resolve_target(name, store) for name in settings.pin]
    state = ServerState(settings, store, opener, budget=budget, preload=_unique(preload), early=early)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # uvicorn binds the socket right after startup, so /health answers 503 while the kept models load
        task = asyncio.get_running_loop().create_task(state.models.preload())
        if not load_in_background:
            await task
        try:
            yield
        finally:
            await state.models.aclose()

    app = FastAPI(title="edge", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.edge = state
    auth = Depends(_require_api_key)
    for method, path, handler, needs_key in routes(state):
        app.add_api_route(
            path, handler, methods=[method], dependencies=[auth] if needs_key else [], include_in_schema=False
        )
    for exc_type in (Exception, EdgeError, RequestValidationError, StarletteHTTPException, ClientGone):
        app.add_exception_handler(exc_type, _handle_error)
    app.add_middleware(SecurityMiddleware, settings=settings, respond=error_response)
    app.add_middleware(_Guard, state=state)  # added last: outermost
    return app


# -- handlers that belong to no API ------------------------------------------------------------------
async def health(request: Request):
    """200 with each model in memory (loaded, loading, requests in flight, memory); 503 while a model
    the server keeps (edge serve MODEL, --pin) loads, or that model's load error."""
    state: ServerState = request.app.state.edge
    return JSONResponse(state.health())


async def metrics(request: Request):
    state: ServerState = request.app.state.edge
    return Response(state.metrics.render(), media_type=metrics_mod.CONTENT_TYPE_LATEST)


def _require_api_key(request: Request) -> None:
    key = request.app.state.edge.settings.api_key
    if key is None:
        return
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    if given is None or not hmac.compare_digest(given.encode(), key.encode()):
        raise AuthenticationError("missing or wrong API key: send `Authorization: Bearer KEY` or `X-Api-Key: KEY`")


# -- the one exception handler ------------------------------------------------------------------------
async def _handle_error(request: Request, exc: Exception) -> Response:
    return error_response(request.url.path, _as_edge_error(exc))


def _as_edge_error(exc: BaseException) -> BaseException:
    if isinstance(exc, (EdgeError, ClientGone)):
        return exc
    if isinstance(exc, RequestValidationError):
        return BadRequestError(_validation_message(exc), param=_validation_param(exc))
    if isinstance(exc, StarletteHTTPException):
        if exc.status_code == 404:
            return NotFoundError("no such route: see the README for the OpenAI (/v1/...) and Ollama (/api/...) routes")
        if exc.status_code == 405:
            err = BadRequestError("method not allowed on this route")
            err.http_status = 405
            return err
        return BadRequestError(str(exc.detail))
    log.exception("unexpected error", exc_info=exc)
    return exc


def error_response(path: str, exc: BaseException) -> Response:
    """Each API's error shape: Ollama routes `{"error": "..."}`, everything else OpenAI's."""
    if isinstance(exc, ClientGone):
        return Response(status_code=499)
    body = ollama_error_body(exc) if path.startswith("/api/") or path == "/" else openai_error_body(exc)
    headers = exc.headers() if isinstance(exc, EdgeError) else {}
    return JSONResponse(body, status_code=http_status_for(exc), headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")  # edge.server.limits.between
        parts.append(f"{loc or 'body'}: {msg}")
    return "invalid request: " + "; ".join(parts)


def _validation_param(exc: RequestValidationError) -> str | None:
    errors = exc.errors()
    loc = [str(x) for x in errors[0].get("loc", ()) if x != "body"] if errors else []
    return loc[0] if loc else None


# -- middleware ------------------------------------------------------------------------------------
class _Guard:
    """Pure ASGI, outermost: request metrics (refusals by edge.server.security counted too) and JSON bodies."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if scope["method"] == "POST":
                _as_json(scope)
            await self.app(scope, receive, send_wrapper)
        finally:
            for lease in scope.get(models_mod.LEASES, ()):  # the response is sent (or abandoned): the model is free
                lease.release()
            route = scope.get("route")
            self.state.metrics.observe_request(getattr(route, "path", "unmatched"), status["code"])


def _unique(targets: list[Target]) -> list[Target]:
    seen: dict[str, Target] = {}
    for t in targets:
        seen.setdefault(t.key, t)
    return list(seen.values())


def _as_json(scope) -> None:
    """Bodies are JSON whatever the Content-Type says, as Ollama and llama-server read them:
    `curl -d '{...}'` sends application/x-www-form-urlencoded. (The scope is changed in place so
    the router's `route` lands where the request metric reads it.)"""
    headers = [(k, v) for k, v in scope.get("headers") or [] if k != b"content-type"]
    scope["headers"] = [*headers, (b"content-type", b"application/json")]


def _version() -> str:
    import edge

    return edge.__version__
