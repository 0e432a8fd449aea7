"""firmware.client against a live `edge serve` over TCP and its Unix socket, and against a scripted
HTTP server for retries, Retry-After and timeouts."""

from __future__ import annotations

import http.server
import json
import stat
import threading

import pytest

import firmware.client as client_mod
from edge.errors import BadRequestError, ModelNotFoundError, RequestTimeoutError, UnavailableError
from firmware.client import Client
from tests.support.live import CTX, SYSTEM, start_server

QUESTION = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def uds_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("client-home")
    sock = home / "edge.sock"
    srv = start_server(home, "--parallel", "2", "--ctx", str(CTX), "--uds", str(sock), wait=False)
    Client(f"unix://{sock}").wait_ready(timeout=180)  # the client's own wait while the model loads
    yield srv, sock
    srv.stop()


@pytest.mark.slow
def test_chat_and_generate_over_tcp_and_uds(uds_server, oracle):
    srv, sock = uds_server
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660
    tcp, uds = Client(srv.url, timeout=300), Client(f"unix://{sock}", timeout=300)
    expected = oracle.chat(QUESTION, 24)
    assert "Paris" in expected
    for c in (tcp, uds):
        assert c.chat(QUESTION, max_tokens=24, temperature=0) == expected
        assert "".join(c.chat(QUESTION, max_tokens=24, temperature=0, stream=True)) == expected
        text = c.generate("The capital of France is", max_tokens=8, temperature=0)
        assert text and text == "".join(
            c.generate("The capital of France is", max_tokens=8, temperature=0, stream=True)
        )
    assert uds.health()


@pytest.mark.slow
def test_server_errors_become_edge_errors(uds_server):
    srv, sock = uds_server
    c = Client(f"unix://{sock}", model="no-such-model")
    with pytest.raises(ModelNotFoundError, match="not served here"):
        c.chat(QUESTION, max_tokens=1)
    with pytest.raises(BadRequestError):
        Client(srv.url).chat(QUESTION, max_tokens=-5)


class _Scripted(http.server.BaseHTTPRequestHandler):
    script: list = []  # (status, headers, body) answered in order; the last one repeats
    seen: list = []

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen.append(self.path)
        type(self).auth = self.headers.get("Authorization")
        status, headers, body = self.script[min(len(self.seen) - 1, len(self.script) - 1)]
        if status is None:  # never answer
            threading.Event().wait(30)
            return
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def scripted():
    def start(script):
        handler = type("H", (_Scripted,), {"script": script, "seen": []})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", handler

    servers = []
    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


OK = (200, {}, {"choices": [{"message": {"role": "assistant", "content": "hi"}}]})
BUSY = (503, {"Retry-After": "2"}, {"error": {"message": "all 1 slots are busy", "type": "server_error"}})


def test_503_is_retried_honouring_retry_after(scripted, monkeypatch):
    sleeps = []
    monkeypatch.setattr(client_mod.time, "sleep", sleeps.append)
    url, handler = scripted([BUSY, BUSY, OK])
    assert Client(url, retries=3).chat([{"role": "user", "content": "x"}]) == "hi"
    assert len(handler.seen) == 3 and sleeps == [2.0, 2.0]


def test_503_after_the_last_retry_is_raised(scripted, monkeypatch):
    monkeypatch.setattr(client_mod.time, "sleep", lambda s: None)
    url, handler = scripted([BUSY])
    with pytest.raises(UnavailableError, match="slots are busy") as info:
        Client(url, retries=2).chat([{"role": "user", "content": "x"}])
    assert info.value.retry_after == 2 and len(handler.seen) == 3


def test_timeout_and_refused_connection(scripted, monkeypatch, tmp_path):
    url, _ = scripted([(None, {}, None)])
    with pytest.raises(RequestTimeoutError):
        Client(url, timeout=0.5, retries=0).chat([{"role": "user", "content": "x"}])
    sleeps = []
    monkeypatch.setattr(client_mod.time, "sleep", sleeps.append)
    with pytest.raises(UnavailableError, match="cannot connect"):
        Client(f"unix://{tmp_path / 'absent.sock'}", retries=2, backoff=0.5).chat([{"role": "user", "content": "x"}])
    assert sleeps == [0.5, 1.0]  # a restarting service gets a growing backoff


def test_bad_url_is_refused():
    with pytest.raises(BadRequestError, match="unsupported URL"):
        Client("ftp://x")


def test_api_key_is_sent_and_stream_errors_raise(scripted):
    from edge.errors import EdgeError

    sse = (
        b'data: {"choices": [{"delta": {"content": "Hel"}}]}\n\n'
        b'data: {"error": {"message": "generation failed: out of memory"}}\n\n'
    )
    url, handler = scripted([(200, {"Content-Type": "text/event-stream"}, sse)])
    pieces = []
    with pytest.raises(EdgeError, match="out of memory"):
        for piece in Client(url, api_key="s3cret").chat([{"role": "user", "content": "x"}], stream=True):
            pieces.append(piece)
    assert pieces == ["Hel"] and handler.auth == "Bearer s3cret"
