"""What stands between the socket and the handlers: Host allow-list, browser origins (CORS), the body
size and read deadline, the refusal to listen beyond loopback without a key, and a uvicorn protocol
that cuts off clients trickling their request. The threat model is in SECURITY.md.

API keys themselves are checked per route (edge.server.app._require_api_key) because the route table
says which routes need one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import h11

from edge.config import Settings
from edge.errors import BadRequestError, EdgeError, ForbiddenError, PayloadTooLargeError, RequestTimeoutError
from edge.lightimport import submodule

if TYPE_CHECKING:
    from uvicorn.protocols.http.h11_impl import H11Protocol
else:  # without uvicorn/__init__.py, which imports its command line (click, the process supervisors)
    H11Protocol = submodule("uvicorn", "protocols.http.h11_impl").H11Protocol

LOOPBACK_NAMES = {"localhost", "localhost.", "::1"}
MAX_HEADER_BYTES = 16 * 1024  # h11_max_incomplete_event_size: a request line + headers larger than this is cut
KEEP_ALIVE_S = 5  # idle keep-alive connections are closed after this
CORS_METHODS = "GET, POST, HEAD, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, X-Api-Key"


# -- binding -------------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_key_for_bind(settings: Settings) -> None:
    """Listening beyond loopback without an API key is refused (exit code 2), not merely warned about."""
    if not is_loopback(settings.host) and not settings.api_key:
        raise BadRequestError(
            f"refusing to listen on {settings.host} without an API key: anyone on the network could use this "
            "server. Set one with --api-key KEY, --api-key-file FILE or EDGE_API_KEY_FILE=FILE "
            "(e.g. `openssl rand -hex 32 > ~/.edge/key && chmod 600 ~/.edge/key`), or bind --host 127.0.0.1",
            param="host",
        )


def uvicorn_options(settings: Settings) -> dict:
    """uvicorn.Config keywords: the guarded protocol, the header size cap and the keep-alive timeout."""
    protocol = type("EdgeH11Protocol", (GuardedH11Protocol,), {"read_timeout": settings.read_timeout + 1.0})
    return {"http": protocol, "h11_max_incomplete_event_size": MAX_HEADER_BYTES, "timeout_keep_alive": KEEP_ALIVE_S}


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the whole request (line, headers, body).

    uvicorn has no header-read timeout: a client that sends one byte every few seconds holds its
    connection (and a file descriptor) forever, and any byte cancels the keep-alive timer. Here a
    deadline is armed when a connection opens and after each response; it is disarmed once the
    request is complete. It fires one second after the middleware's body deadline, so a slow body
    gets a 408 from the middleware and a slow request line or header block gets this raw 408."""

    read_timeout: float = 31.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
            self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.read_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self.logger.info(
            "closing a connection from %s: request not complete after %.0f s", self.client, self.read_timeout
        )
        if self.cycle is None or self.cycle.response_complete:  # nothing answered yet on this request
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        self.transport.close()


# -- Host and Origin ------------------------------------------------------------------------------------
def host_name(value: str) -> str:
    """`Host` header -> lowercase name without port (IPv6 without brackets)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def check_host(settings: Settings, host_header: str | None) -> EdgeError | None:
    """DNS rebinding: a page at evil.example whose name now resolves to 127.0.0.1 sends `Host: evil.example`."""
    name = host_name(host_header or "")
    if not name:
        return ForbiddenError(
            "a request without a Host header is refused (DNS-rebinding guard): send "
            "`Host: localhost` (every HTTP/1.1 client does)"
        )
    if is_loopback(name) or name in settings.allowed_hosts:
        return None
    if not is_loopback(settings.host) and not settings.allowed_hosts:
        return None  # listening on the network with a key (required): any name reaching us is fine
    return ForbiddenError(
        f"Host {name!r} is not allowed (DNS-rebinding guard); if clients reach this server by "
        f"that name, start it with --allow-host {name} (EDGE_ALLOWED_HOSTS)"
    )


def origin_allowed(settings: Settings, origin: str, host_header: str) -> tuple[bool, bool]:
    """(allowed, needs CORS headers). Same-origin pages need none; listed origins get them."""
    if "*" in settings.cors_origins or origin.rstrip("/") in settings.cors_origins:
        return True, True
    parts = urlsplit(origin)
    return bool(parts.netloc) and parts.netloc.lower() == host_header.strip().lower(), False


# -- the middleware ---------------------------------------------------------------------------------------
class SecurityMiddleware:
    """Pure ASGI, in this order: Host allow-list, Origin (CORS preflight answered here), then the body
    read in full within `max_body_bytes` and `read_timeout` (413 / 408, also for chunked bodies
    without Content-Length) and replayed to the app."""

    def __init__(self, app, settings: Settings, respond):
        self.app, self.settings, self.respond = app, settings, respond  # respond(path, exc) -> Response

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        problem = check_host(self.settings, headers.get("host"))
        if sum(1 for k, _ in scope.get("headers") or [] if k.lower() == b"host") > 1:
            problem = ForbiddenError("more than one Host header: send exactly one")
        origin = headers.get("origin")
        cors = False
        if problem is None and origin is not None:
            allowed, cors = origin_allowed(self.settings, origin, headers.get("host", ""))
            if not allowed:
                problem = ForbiddenError(
                    f"browser origin {origin!r} is not allowed to call this API; start the "
                    f"server with --cors-origin {origin} (EDGE_CORS_ORIGINS) to allow it"
                )
        if problem is not None:
            return await self._reply(scope, receive, send, problem)
        if cors and origin is not None:  # cors is only ever set for a request with an origin
            if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
                return await _preflight(origin, send)
            send = _with_cors(send, origin)
        body, complete = await self._read_body(headers, receive)
        if isinstance(body, EdgeError):
            return await self._reply(scope, receive, send, body, close=not complete)
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, headers: dict, receive) -> tuple[bytes | EdgeError, bool]:
        """(the body, or the 413/408 to answer; whether the request was read to its end).

        Past the limit the rest of the body is still read and dropped, up to DRAIN_FACTOR x the limit
        and within the read timeout: closing a socket with unread input makes the kernel send RST, which
        can destroy the 413 before a client that writes its whole body first reads it (nginx's lingering
        close does the same). Read to its end, the connection stays usable."""
        limit = self.settings.max_body_bytes
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > DRAIN_FACTOR * limit):
            return _too_large(limit), False
        deadline = time.monotonic() + self.settings.read_timeout
        chunks: list[bytes] = []
        size = 0
        over = length is not None and int(length) > limit  # known too large: the body is only counted
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
            except asyncio.TimeoutError:
                if over:
                    return _too_large(limit), False
                return RequestTimeoutError(
                    f"the request body did not arrive within {self.settings.read_timeout:g} s "
                    "(EDGE_READ_TIMEOUT); send it at once"
                ), False
            if message["type"] != "http.request":  # the client left; the app sees the disconnect next
                return (_too_large(limit), False) if over else (b"".join(chunks), True)
            size += len(message.get("body", b""))
            ended = not message.get("more_body", False)
            if size > limit:
                over = True
                chunks.clear()
            if over:
                if ended or size > DRAIN_FACTOR * limit:
                    return _too_large(limit), ended
                continue
            chunks.append(message.get("body", b""))
            if ended:
                return b"".join(chunks), True

    async def _reply(self, scope, receive, send, exc: EdgeError, close: bool = False):
        response = self.respond(scope["path"], exc)
        if close:  # the request was not read to its end: the connection cannot be reused
            response.headers["Connection"] = "close"
        await response(scope, receive, send)


DRAIN_FACTOR = 4  # an oversized body up to 4x the limit is read and dropped before the 413 goes out


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"request body larger than {limit} bytes; send less, or raise the limit with EDGE_MAX_BODY"
    )


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the disconnect, for streaming handlers

    return replay


async def _preflight(origin: str, send) -> None:
    headers = [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"vary", b"Origin"),
        (b"access-control-allow-methods", CORS_METHODS.encode()),
        (b"access-control-allow-headers", CORS_HEADERS.encode()),
        (b"access-control-max-age", b"600"),
        (b"content-length", b"0"),
    ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def _with_cors(send, origin: str):
    async def wrapped(message):
        if message["type"] == "http.response.start":
            extra = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return wrapped
