"""A small client for robot and kiosk code: stdlib only (http.client), TCP or a Unix socket.

    from firmware.client import Client
    c = Client("unix:///run/edge/edge.sock")            # or Client("http://127.0.0.1:11434")
    c.chat([{"role": "user", "content": "Say hi"}])     # -> "Hi! ..."
    for piece in c.chat(messages, stream=True): ...     # text pieces as they are generated
    c.generate("Once upon a time", max_tokens=32)       # plain completion
    r = c.chat_reply(messages, tools=TOOLS)             # -> Reply(content, tool_calls, finish_reason)
    c.wait_ready(timeout=120)                           # until /health says the model is loaded

It speaks the server's OpenAI routes (/v1/chat/completions, /v1/completions, SSE when streaming).
A 503 (model loading, queue full) and a refused connection (the service restarting) are retried
up to `retries` times, sleeping for the server's Retry-After (capped) or a growing backoff;
a stream is never retried once text has arrived. Errors are edge.errors classes with the server's
message: BadRequestError, AuthenticationError, NotFoundError, UnavailableError, RequestTimeoutError.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from edge.errors import (
    AuthenticationError,
    BadRequestError,
    EdgeError,
    ForbiddenError,
    ModelNotFoundError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnavailableError,
)

_ERRORS = {
    400: BadRequestError,
    401: AuthenticationError,
    403: ForbiddenError,
    404: ModelNotFoundError,
    408: RequestTimeoutError,
    413: PayloadTooLargeError,
    503: UnavailableError,
}
MAX_RETRY_AFTER_S = 30.0


@dataclass(frozen=True)
class ToolCall:
    """A call the model asks for: `arguments` already decoded (the server guarantees JSON that
    validates against the tool's schema)."""

    id: str
    name: str
    arguments: dict

    def as_message(self) -> dict:
        """This call as it goes back into the history (inside the assistant message's tool_calls)."""
        fn = {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)}
        return {"id": self.id, "type": "function", "function": fn}


@dataclass(frozen=True)
class Reply:
    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str = "stop"

    def as_message(self) -> dict:
        """The assistant message to append to the history before the tool results."""
        msg: dict = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            msg["tool_calls"] = [c.as_message() for c in self.tool_calls]
        return msg


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over an AF_UNIX stream socket (the Host header stays "localhost")."""

    def __init__(self, path: str, timeout: float | None = None):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    def __init__(
        self,
        url: str = "http://127.0.0.1:11434",
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 5,
        backoff: float = 0.5,
    ):
        """`url`: http://host:port or unix:///path/to.sock. `timeout`: seconds per socket operation
        (connect, and each read: a stream may last longer as long as tokens keep coming)."""
        parts = urlsplit(url)
        self._connect: Callable[[], http.client.HTTPConnection]
        if parts.scheme == "unix":
            self._connect = lambda: UnixHTTPConnection(parts.path, timeout=timeout)
        elif parts.scheme == "http":
            host, port = parts.hostname or "127.0.0.1", parts.port or 80
            self._connect = lambda: http.client.HTTPConnection(host, port, timeout=timeout)
        else:
            raise BadRequestError(f"unsupported URL {url!r}: use http://host:port or unix:///path/to.sock")
        self.url, self.model, self.api_key = url, model, api_key
        self.retries, self.backoff = retries, backoff

    # -- the API ------------------------------------------------------------------------------
    def chat(self, messages: list[dict], *, stream: bool = False, **params) -> str | Iterator[str]:
        """The assistant's answer (or, with stream=True, an iterator of its text pieces).
        `params`: OpenAI fields, e.g. max_tokens=64, temperature=0, stop=["\\n"], seed=1."""
        body = {"messages": messages, **params}
        return self._complete(
            "/v1/chat/completions",
            body,
            stream,
            lambda c: c["message"]["content"],
            lambda c: c.get("delta", {}).get("content") or "",
        )

    def chat_reply(self, messages: list[dict], *, tools: list[dict] | None = None, **params) -> Reply:
        """The whole reply as data: text and/or tool calls. `tools` (OpenAI function tools) and
        `tool_choice` ("auto", "none", "required" or {"type": "function", "function": {"name": ...}})
        pass through as they are."""
        body = {"messages": messages, **params}
        if tools:
            body["tools"] = tools
        if self.model and "model" not in body:
            body["model"] = self.model
        _, _, data = self._request("POST", "/v1/chat/completions", body)
        choice = json.loads(data)["choices"][0]
        msg = choice["message"]
        calls = [
            ToolCall(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in msg.get("tool_calls") or []
        ]
        return Reply(msg.get("content"), calls, choice.get("finish_reason") or "stop")

    def generate(self, prompt: str, *, stream: bool = False, **params) -> str | Iterator[str]:
        """Plain text continuation of `prompt` (no chat template)."""
        body = {"prompt": prompt, **params}
        return self._complete("/v1/completions", body, stream, lambda c: c["text"], lambda c: c.get("text") or "")

    def health(self) -> dict:
        """/health's JSON; raises UnavailableError while the model loads (no retries)."""
        status, headers, data = self._request("GET", "/health", None, retries=0)
        return json.loads(data or b"{}")

    def wait_ready(self, timeout: float = 180.0, poll: float = 0.2) -> dict:
        """Block until /health says 200; UnavailableError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.health()
            except UnavailableError:
                if time.monotonic() >= deadline:
                    raise UnavailableError(
                        f"the edge server at {self.url} is not ready after {timeout:.0f} s; "
                        "check `systemctl status edge` and its log"
                    ) from None
            time.sleep(poll)

    # -- plumbing -----------------------------------------------------------------------------
    def _complete(self, path, body, stream, whole, piece):
        if self.model and "model" not in body:
            body["model"] = self.model
        if not stream:
            _, _, data = self._request("POST", path, body)
            return whole(json.loads(data)["choices"][0])
        return self._stream(path, {**body, "stream": True}, piece)

    def _stream(self, path: str, body: dict, piece) -> Iterator[str]:
        conn, resp = self._open("POST", path, body)
        try:
            for event in _sse_events(resp):
                if "error" in event:
                    err = event["error"]
                    raise EdgeError(err.get("message", str(err)) if isinstance(err, dict) else str(err))
                for choice in event.get("choices", []):
                    text = piece(choice)
                    if text:
                        yield text
        finally:
            conn.close()

    def _request(self, method: str, path: str, body: dict | None, retries: int | None = None):
        conn, resp = self._open(method, path, body, retries)
        try:
            return resp.status, resp.headers, resp.read()
        finally:
            conn.close()

    def _open(self, method: str, path: str, body: dict | None, retries: int | None = None):
        """Send, retrying refused connections and 503s; returns (connection, a 2xx response)."""
        retries = self.retries if retries is None else retries
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        payload = json.dumps(body).encode() if body is not None else None
        for attempt in range(retries + 1):
            conn = self._connect()
            try:
                conn.request(method, path, body=payload, headers=headers)
                resp = conn.getresponse()
            except (ConnectionRefusedError, FileNotFoundError) as e:
                conn.close()
                if attempt == retries:
                    raise UnavailableError(
                        f"cannot connect to the edge server at {self.url} ({e.strerror}); "
                        "is the service running? (`systemctl status edge`)"
                    ) from None
                time.sleep(self.backoff * 2**attempt)
                continue
            except TimeoutError:
                conn.close()
                raise RequestTimeoutError(f"no answer from {self.url} within the client timeout") from None
            if resp.status < 300:
                return conn, resp
            error = _error_from(resp)
            conn.close()
            if not isinstance(error, UnavailableError) or attempt == retries:
                raise error
            time.sleep(min(float(error.retry_after), MAX_RETRY_AFTER_S) or self.backoff * 2**attempt)
        raise AssertionError("unreachable")


def _error_from(resp: http.client.HTTPResponse) -> EdgeError:
    raw = resp.read()
    try:
        body = json.loads(raw)
        err = body.get("error", body)
        message = str(err.get("message") or err) if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        message = raw.decode(errors="replace")[:500] or resp.reason
    klass = _ERRORS.get(resp.status, EdgeError)
    if klass is UnavailableError:
        try:
            retry_after = max(0, int(resp.headers.get("Retry-After", "1")))
        except ValueError:
            retry_after = 1
        return UnavailableError(message, retry_after=retry_after)
    return klass(f"{message} (HTTP {resp.status})")


def _sse_events(resp: http.client.HTTPResponse) -> Iterator[dict]:
    """`data: {...}` lines until `data: [DONE]`."""
    while line := resp.readline():
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        yield json.loads(data)
