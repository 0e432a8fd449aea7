"""The HTTP server: OpenAI and Ollama APIs over the models of the store (edge.server.models).

`serve(settings)` binds the socket first (a busy port is a clear error, not a traceback), then
runs uvicorn; a model it must keep (`edge serve MODEL`, --pin) loads in the background so /health
can say 503 until it is ready. Such a model that fails to load stops the server and re-raises, so
`edge serve` exits with the mapped code.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from edge.config import Settings
from edge.errors import BadRequestError, UnavailableError

if TYPE_CHECKING:
    import uvicorn

__all__ = ["create_app", "serve", "bind"]


def create_app(settings: Settings, **kw):
    import_fastapi()
    from edge.server.app import create_app as _create

    return _create(settings, **kw)


def import_fastapi() -> None:
    """Import FastAPI with pydantic's schema building deferred for the models it defines at import.

    `fastapi.openapi.models` declares the ~40 pydantic models of an OpenAPI document, and pydantic
    builds each one's validator as its class is made: about a third of the server's imports, spent on
    documents the server never produces (openapi_url=None). With pydantic's `defer_build` default on
    for the length of this import, they are built the first time one is used, if ever; models defined
    afterwards follow their own config (the request bodies in edge.server.openai, .ollama and
    .embeddings defer theirs to their first request). When pydantic's defaults are not where this
    expects them, FastAPI imports the ordinary way.

    FastAPI also imports all of `pydantic.v1` (~0.1 s) the first time it asks whether a route's
    body is a pydantic v1 model; no class can derive from v1's BaseModel before pydantic.v1 is
    imported, so until then the answer is no without importing it (`_skip_v1_checks`)."""
    import sys

    if "fastapi" in sys.modules:
        return
    try:
        from pydantic._internal import _config
    except ImportError:  # another pydantic layout: nothing to defer
        _config = None  # type: ignore[assignment]
    defaults = getattr(_config, "config_defaults", None)
    if not isinstance(defaults, dict) or defaults.get("defer_build") is not False:
        import fastapi

        return
    defaults["defer_build"] = True
    try:
        import fastapi
        import fastapi.openapi.models  # noqa: F401
    finally:
        defaults["defer_build"] = False
    _skip_v1_checks()


def _skip_v1_checks() -> None:
    import sys

    shared = sys.modules.get("fastapi._compat.shared")
    users = [sys.modules.get(m) for m in ("fastapi._compat.shared", "fastapi._compat", "fastapi.encoders")]
    for name in ("is_pydantic_v1_model_class", "is_pydantic_v1_model_instance"):
        check = getattr(shared, name, None)
        if check is None:
            continue

        def only_once_v1_exists(obj, _check=check) -> bool:
            return "pydantic.v1" in sys.modules and _check(obj)

        for module in users:  # the modules that bound the function by name at their import
            if getattr(module, name, None) is check:
                setattr(module, name, only_once_v1_exists)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno in (98, 48):  # EADDRINUSE (Linux, macOS)
            raise UnavailableError(
                f"port {port} on {host} is in use (an Ollama or another edge already "
                f"running?); stop it or choose another with --port"
            ) from None
        raise BadRequestError(f"cannot listen on {host}:{port}: {exc.strerror}; check --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    settings: Settings,
    *,
    log_level: str = "info",
    uds=None,
    tcp: bool = True,
    store=None,
    target=None,
    budget=None,
) -> None:
    """Run until Ctrl-C / SIGTERM. Raises the load error if a model it must keep cannot be loaded.

    `store`/`target`/`budget`: the model store, the model to preload and keep (None with no
    `settings.model`: nothing preloads, every model in the store loads on demand) and the memory
    budget (edge.fit.server_budget), when the caller has them already.
    `uds`: also (or, with tcp=False, only) listen on this Unix socket path (edge.server.unix).
    Under systemd (NOTIFY_SOCKET) readiness and watchdog pings go through edge.server.supervision:
    READY=1 after the preloaded model passed its self-test, or at once when nothing preloads.

    The preloaded model starts loading before FastAPI and uvicorn are imported: llama.cpp reads the
    file and builds the context outside the GIL while the HTTP stack imports (~0.3 s of a ~1.3 s cold
    start on a 2-core box). Until the socket is bound, /health does not exist yet, as before."""
    from edge.server.security import require_key_for_bind
    from edge.server.state import EarlyLoad, resolve_target
    from edge.store import ModelStore

    if tcp:  # a Unix socket is guarded by its file permissions
        require_key_for_bind(settings)  # before anything is bound: exit code 2 with how to set a key
    if store is None:
        store = ModelStore(settings.home, models_dir=settings.models_dir)
    if target is None and settings.model:  # `edge serve` resolved it already, to plan the memory
        target = resolve_target(settings, store)  # a wrong name fails here, before anything loads
    early = None
    if target is not None:
        from edge.fit import model_need, server_budget

        budget = budget or server_budget(settings)
        need = model_need(settings, budget, target.path, target.size_bytes)
        early = EarlyLoad(target, settings.with_(ctx=need.n_ctx))

    from edge.lightimport import submodule
    from edge.server.security import uvicorn_options
    from edge.server.supervision import Supervision
    from edge.server.unix import bind_unix

    try:
        app = create_app(settings, store=store, target=target, early=early, budget=budget)
        sockets = ([bind(settings.host, settings.port)] if tcp else []) + ([bind_unix(uds)] if uds else [])
        if not sockets:
            raise BadRequestError("nothing to listen on: give --uds PATH when TCP is turned off")
    except BaseException:
        if early is not None:
            early.discard()  # never exit while llama.cpp is still reading the file in the other thread
        raise
    state = app.state.edge
    models = state.models
    supervision = Supervision()
    config = submodule("uvicorn", "config").Config(
        app, log_level=log_level, timeout_graceful_shutdown=5, access_log=False, **uvicorn_options(settings)
    )
    server: uvicorn.Server = submodule("uvicorn", "server").Server(config)  # uvicorn's modules, not its CLI

    def remove_socket() -> None:
        if uds:
            Path(uds).unlink(missing_ok=True)

    # STOPPING=1 and the socket file removed as SIGTERM arrives (uvicorn re-raises it after shutdown);
    # uvicorn's signal handler calls server.handle_exit, so the instance's method is replaced
    server.handle_exit = supervision.on_exit(server.handle_exit, remove_socket)  # type: ignore[method-assign]
    t0 = time.perf_counter()

    def on_load_error(exc: BaseException) -> None:
        supervision.failed(exc)
        server.should_exit = True

    def on_loaded(engine) -> None:  # in the loader thread; raising fails the load
        supervision.loaded(engine, stopping=lambda: server.should_exit)  # under systemd: self-test, READY=1
        info = engine.info
        print(
            f"edge: ready in {time.perf_counter() - t0:.2f} s ({info.family}, {info.quantization}, "
            f"context {info.n_ctx} per slot)",
            file=sys.stderr,
            flush=True,
        )

    models.on_load_error, models.on_loaded = on_load_error, on_loaded
    where = []
    for sock in sockets:
        if sock.family == socket.AF_UNIX:
            where.append(f"unix:{sock.getsockname()}")
            continue
        host, port = sock.getsockname()[:2]
        where.append(f"http://{_url_host(host)}:{port}")  # beyond loopback only with a key (security.py)
    kept = ", ".join(t.name for t in models.pinned.values())
    budget_gib = models.capacity_bytes / 2**30
    what = f"{kept} (kept loaded) and" if kept else "every model in"
    print(
        f"edge: serving {what} the store on {' and '.join(where)}, models within {budget_gib:.2f} GiB"
        + (" - loading..." if kept else ""),
        file=sys.stderr,
        flush=True,
    )
    if kept:
        supervision.loading(kept)
    else:
        supervision.notifier.ready("serving the model store")
    try:
        server.run(sockets=sockets)
    finally:
        supervision.stopped()
        if uds:
            Path(uds).unlink(missing_ok=True)
    if models.preload_error is not None:
        raise models.preload_error


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
