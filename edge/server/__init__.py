"""The HTTP server: OpenAI and Ollama APIs over one loaded `Engine`.

`serve(settings)` binds the socket first (a busy port is a clear error, not a traceback), then
runs uvicorn; the model loads in the background so /health can say 503 until it is ready. A model
that fails to load stops the server and re-raises, so `edge serve` exits with the mapped code.
"""

from __future__ import annotations

import socket
import sys
import time

from edge.errors import BadRequestError, UnavailableError
from edge.settings import Settings

__all__ = ["create_app", "serve", "bind"]


def create_app(settings: Settings, **kw):
    from edge.server.app import create_app as _create

    return _create(settings, **kw)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno in (98, 48):  # EADDRINUSE (Linux, macOS)
            raise UnavailableError(f"port {port} on {host} is in use (an Ollama or another edge already "
                                   f"running?); stop it or choose another with --port") from None
        raise BadRequestError(f"cannot listen on {host}:{port}: {exc.strerror}; check --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings, *, log_level: str = "info") -> None:
    """Run until Ctrl-C / SIGTERM. Raises the load error if the model cannot be loaded."""
    import uvicorn

    from edge.server.security import require_key_for_bind, uvicorn_options

    require_key_for_bind(settings)  # before anything is bound: exit code 2 with how to set a key
    app = create_app(settings)
    state = app.state.edge
    sock = bind(settings.host, settings.port)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5, access_log=False,
                            **uvicorn_options(settings))
    server = uvicorn.Server(config)
    t0 = time.perf_counter()

    def on_load_error(exc: BaseException) -> None:
        server.should_exit = True

    def on_loaded(engine) -> None:
        info = engine.info
        print(f"edge: ready in {time.perf_counter() - t0:.2f} s ({info.family}, {info.quantization}, "
              f"context {info.n_ctx} per slot)", file=sys.stderr, flush=True)

    state.on_load_error, state.on_loaded = on_load_error, on_loaded
    host, port = sock.getsockname()[:2]
    if not settings.api_key and host not in ("127.0.0.1", "::1"):
        print(f"edge: warning: listening on {host} without --api-key: anyone on the network can use this server",
              file=sys.stderr, flush=True)
    print(f"edge: serving {state.target.name} ({state.target.path}) on http://{_url_host(host)}:{port} "
          f"- loading the model...", file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    if state.load_error is not None:
        raise state.load_error


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
