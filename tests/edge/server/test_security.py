"""Hostile clients over HTTP: API keys and key files, the refusal to listen on the network without
one, Host allow-list (DNS rebinding), browser origins (CORS), limits (body, numbers, context, time) and
clients that trickle their request. What test_http_errors.py already covers (401 on every route, a
foreign Host on loopback, a 413 by Content-Length) is not repeated here.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time

import httpx
import pytest
from starlette.testclient import TestClient

from edge.config import Settings
from edge.engine import open_engine
from edge.errors import BadRequestError
from edge.server import create_app
from edge.server.security import check_host, host_name, is_loopback
from tests.support.live import edge_env, free_port, start_server

MODEL = "smollm2:135m-q4_1"
BASE = "http://127.0.0.1:11434"


def chat(text: str, **kw) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "temperature": 0, **kw}


@pytest.fixture(scope="module")
def app_client(smollm2_path, tmp_path_factory):
    """The real model in process, one slot, a small context, one allowed extra origin."""
    settings = Settings(
        model=str(smollm2_path),
        home=tmp_path_factory.mktemp("home"),
        ctx=256,
        threads=1,
        cors_origins=("https://app.example",),
        allowed_hosts=("edge.lan",),
    )
    with TestClient(create_app(settings, load_in_background=False), base_url=BASE) as c:
        yield c


def requests_served(c: TestClient) -> int:
    return c.get("/health").json()["requests"]


# -- Host allow-list ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "host", ["", "evil.example", "evil.example:11434", "127.0.0.1.evil.example", "localhost.evil.example"]
)
def test_foreign_or_empty_host_is_refused(app_client, host):
    r = app_client.get("/v1/models", headers={"Host": host})
    assert r.status_code == 403
    assert ("Host" in r.json()["error"]["message"]) and ("--allow-host" in r.json()["error"]["message"] or not host)


@pytest.mark.parametrize(
    "host", ["127.0.0.1:11434", "localhost", "LOCALHOST:8080", "[::1]:11434", "127.0.0.2", "edge.lan:11434"]
)
def test_loopback_names_and_the_allow_list_pass(app_client, host):
    assert app_client.get("/v1/models", headers={"Host": host}).status_code == 200


def test_two_host_headers_are_refused(app_client):
    r = app_client.get("/v1/models", headers=[("Host", "localhost"), ("Host", "evil.example")])
    assert r.status_code == 403 and "more than one Host" in r.json()["error"]["message"]


def test_host_rules_on_a_network_bind():
    """Listening on the network (a key is then mandatory): any Host, unless an allow-list is given."""
    exposed = Settings(host="0.0.0.0", api_key="k")
    assert check_host(exposed, "192.168.1.5:11434") is None
    assert check_host(exposed, "") is not None
    listed = Settings(host="0.0.0.0", api_key="k", allowed_hosts=("robot.lan",))
    assert check_host(listed, "robot.lan") is None and check_host(listed, "localhost:1") is None
    assert check_host(listed, "evil.example").http_status == 403
    assert host_name("[::1]:80") == "::1" and host_name("Edge.LAN:80") == "edge.lan" and host_name("::1") == "::1"
    assert is_loopback("127.8.9.10") and is_loopback("::1") and not is_loopback("0.0.0.0") and not is_loopback("::")


# -- browser origins ------------------------------------------------------------------------------------
def test_a_foreign_page_cannot_make_the_server_generate(app_client):
    """A "simple" cross-site POST (text/plain, no preflight) is refused before any token is evaluated."""
    before = requests_served(app_client)
    r = app_client.post(
        "/api/generate",
        content=json.dumps({"model": MODEL, "prompt": "hi", "stream": False}),
        headers={"Origin": "https://evil.example", "Content-Type": "text/plain"},
    )
    assert r.status_code == 403 and "--cors-origin https://evil.example" in r.json()["error"]
    assert "access-control-allow-origin" not in r.headers
    assert requests_served(app_client) == before


def test_same_origin_and_listed_origins(app_client):
    r = app_client.get("/v1/models", headers={"Origin": BASE})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers  # same origin: no CORS needed
    r = app_client.get("/v1/models", headers={"Origin": "https://app.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    pre = app_client.options(
        "/v1/chat/completions",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "https://app.example"
    assert "Authorization" in pre.headers["access-control-allow-headers"]
    pre = app_client.options(
        "/v1/chat/completions", headers={"Origin": "https://other.example", "Access-Control-Request-Method": "POST"}
    )
    assert pre.status_code == 403 and "access-control-allow-origin" not in pre.headers


# -- limits -------------------------------------------------------------------------------------------------
def test_a_chunked_body_over_the_limit_is_413(app_client):
    """No Content-Length to check up front: the body is counted as it arrives."""

    def body():
        yield b'{"model": "x", "prompt": "'
        for _ in range(5):
            yield b"a" * (1 << 20)
        yield b'"}'

    r = app_client.post("/v1/completions", content=body())
    assert r.status_code == 413 and "4194304" in r.json()["error"]["message"]
    assert "connection" not in r.headers  # read to its end, so the connection stays usable


def test_a_body_past_the_drain_bound_is_413_and_closes_the_connection(app_client):
    """Up to 4x the limit the rest is read and dropped (no RST eating the 413); a Content-Length past that
    is answered at once and the connection closed, since its body will not be read."""
    r = app_client.post("/v1/completions", content=b"x", headers={"content-length": str(17 << 20)})
    assert r.status_code == 413 and r.headers["connection"] == "close"


@pytest.mark.parametrize(
    "route, body, param, allowed",
    [
        ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens", "between 1 and 1048576"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 2**63}, "max_tokens", "between 1 and 1048576"),
        ("/v1/chat/completions", chat("x", max_completion_tokens=-7), "max_completion_tokens", "between 1 and 1048576"),
        ("/v1/chat/completions", chat("x", temperature=1e300), "temperature", "between 0.0 and 2.0"),
        (
            "/api/generate",
            {"model": MODEL, "prompt": "x", "options": {"num_predict": -3}},
            "options.num_predict",
            "between -2 and 1048576",
        ),
        (
            "/api/generate",
            {"model": MODEL, "prompt": "x", "options": {"num_ctx": 0}},
            "options.num_ctx",
            "between 1 and 16777216",
        ),
        (
            "/api/chat",
            {"model": MODEL, "messages": [], "options": {"num_ctx": 2**40}},
            "options.num_ctx",
            "between 1 and 16777216",
        ),
    ],
)
def test_absurd_numbers_are_400_with_the_allowed_range(app_client, route, body, param, allowed):
    before = requests_served(app_client)
    r = app_client.post(route, json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    message = err if isinstance(err, str) else err["message"]
    assert param in message and allowed in message, message
    assert requests_served(app_client) == before


def test_a_prompt_longer_than_the_context_is_400_with_both_numbers(app_client):
    r = app_client.post("/v1/chat/completions", json=chat("hello " * 400))
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_overflow"
    n_prompt = int(err["message"].split("the prompt has ")[1].split()[0])
    assert n_prompt > 256 and "holds 256 per slot" in err["message"] and "--ctx" in err["message"]
    r = app_client.post("/api/generate", json={"model": MODEL, "prompt": "hello " * 400, "raw": True})
    assert r.status_code == 400 and "holds 256 per slot" in r.json()["error"]


# -- the request time limit ---------------------------------------------------------------------------------
class SlowDevice:
    """The real engine with every event delayed, as on a device 100x slower than this one."""

    def __init__(self, engine, delay: float):
        self._engine, self._delay = engine, delay

    def __getattr__(self, name):
        return getattr(self._engine, name)

    async def generate(self, prompt, params, *, stream=True):
        async for ev in self._engine.generate(prompt, params):
            await asyncio.sleep(self._delay)
            yield ev


@pytest.fixture(scope="module")
def slow_client(smollm2_path, tmp_path_factory):
    engines = []

    def opener(path, **kw):
        engines.append(open_engine(path, **kw))
        return SlowDevice(engines[-1], 0.05)

    settings = Settings(
        model=str(smollm2_path), home=tmp_path_factory.mktemp("home"), ctx=512, threads=1, request_timeout=1.0
    )
    with TestClient(create_app(settings, opener=opener, load_in_background=False), base_url=BASE) as c:
        yield c, engines[0]


def wait_slots_free(engine, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while engine.stats()["busy"] or engine.stats()["queued"]:
        assert time.monotonic() < deadline, f"slots still held: {engine.stats()}"
        time.sleep(0.05)


LONG = "Write a very long story about a cat and a dog."


def test_request_timeout_before_the_headers_is_408(slow_client):
    c, engine = slow_client
    r = c.post("/v1/chat/completions", json=chat(LONG, max_tokens=400))
    assert r.status_code == 408 and r.json()["error"]["code"] == "request_timeout"
    assert "--request-timeout" in r.json()["error"]["message"]
    r = c.post("/api/generate", json={"model": MODEL, "prompt": LONG, "stream": False, "options": {"num_predict": 400}})
    assert r.status_code == 408 and "1 s" in r.json()["error"]
    wait_slots_free(engine)


def test_request_timeout_while_streaming_ends_with_an_error_event(slow_client):
    c, engine = slow_client
    with c.stream("POST", "/v1/chat/completions", json=chat(LONG, max_tokens=400, stream=True)) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["error"]["code"] == "request_timeout"
    texts = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-2]]
    assert len(texts) >= 5 and all(t is not None for t in texts)  # the text before the limit was delivered
    assert not any(json.loads(e)["choices"][0]["finish_reason"] for e in events[:-2])
    with c.stream("POST", "/api/chat", json=chat(LONG, options={"num_predict": 400})) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert "request_timeout" not in lines[-1] and "--request-timeout" in lines[-1]["error"]
    assert all(line.get("done") is False for line in lines[:-1]) and len(lines) >= 5
    wait_slots_free(engine)


def test_a_short_request_is_not_affected_by_the_limit(slow_client):
    c, _ = slow_client
    r = c.post("/v1/chat/completions", json=chat("Hi", max_tokens=3))
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"


# -- settings: key files ---------------------------------------------------------------------------------------
def test_api_key_file(tmp_path, capsys):
    key = tmp_path / "key"
    key.write_text("  s3cret-from-file \nsecond line ignored\n")
    key.chmod(0o600)
    assert Settings(api_key_file=key).api_key == "s3cret-from-file"
    assert Settings(api_key_file=key).with_(threads=2).api_key == "s3cret-from-file"  # a copy keeps the key
    assert Settings.from_env({"EDGE_API_KEY_FILE": str(key)}).api_key == "s3cret-from-file"
    assert capsys.readouterr().err == ""
    key.chmod(0o644)
    assert Settings(api_key_file=key).api_key == "s3cret-from-file"
    assert "chmod 600" in capsys.readouterr().err
    # a flag replaces the key the environment gave, whichever way each was given
    assert Settings.from_env({"EDGE_API_KEY": "env-key"}, api_key_file=str(key)).api_key == "s3cret-from-file"
    assert Settings.from_env({"EDGE_API_KEY_FILE": str(key)}, api_key="flag-key").api_key == "flag-key"
    with pytest.raises(BadRequestError, match="not both"):
        Settings(api_key="a", api_key_file=key)
    (tmp_path / "empty").write_text("\n\n")
    with pytest.raises(BadRequestError, match="empty"):
        Settings(api_key_file=tmp_path / "empty")
    with pytest.raises(BadRequestError, match="cannot read"):  # even from the environment: never "no key"
        Settings.from_env({"EDGE_API_KEY_FILE": str(tmp_path / "missing")})


def test_limits_from_the_environment_and_flags():
    s = Settings.from_env(
        {
            "EDGE_ALLOWED_HOSTS": "Robot.lan, kiosk",
            "EDGE_CORS_ORIGINS": "https://a.example/",
            "EDGE_REQUEST_TIMEOUT": "2.5",
            "EDGE_READ_TIMEOUT": "nope",
        }
    )
    assert s.allowed_hosts == ("robot.lan", "kiosk") and s.cors_origins == ("https://a.example",)
    assert s.request_timeout == 2.5 and s.read_timeout == 30.0  # a bad env value falls back
    with pytest.raises(BadRequestError, match="between 1 and 3600"):
        Settings.from_env({}, read_timeout="0")


# -- live: binding without a key, key file, trickling clients ------------------------------------------------
def run_cli(home, *args, timeout=120, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or edge_env(home),
    )


@pytest.mark.slow
def test_listening_on_the_network_without_a_key_is_refused(tmp_path):
    port = free_port()
    r = run_cli(tmp_path, "serve", "--host", "0.0.0.0", "--port", str(port))
    assert r.returncode == 2, r.stderr
    assert "refusing to listen on 0.0.0.0 without an API key" in r.stderr and "--api-key-file" in r.stderr
    assert "Traceback" not in r.stderr
    with socket.socket() as s:  # nothing was bound
        assert s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A real server reached over the network interface name, with a key file and a 1 s read deadline."""
    home = tmp_path_factory.mktemp("guarded")
    key = home / "key"
    key.write_text("file-key-123\n")
    key.chmod(0o600)
    env = edge_env(home, EDGE_API_KEY_FILE=str(key), EDGE_READ_TIMEOUT="1")
    srv = start_server(home, "--host", "0.0.0.0", "--parallel", "1", "--ctx", "256", env=env)
    yield srv
    srv.stop()


@pytest.mark.slow
def test_a_network_bind_with_a_key_file_serves_keyed_clients(guarded):
    assert httpx.get(guarded.url + "/health").status_code == 200
    assert httpx.get(guarded.url + "/v1/models").status_code == 401
    assert httpx.get(guarded.url + "/v1/models", headers={"X-Api-Key": "file-key-12"}).status_code == 401
    r = httpx.get(guarded.url + "/v1/models", headers={"Authorization": "Bearer file-key-123", "Host": "robot.lan"})
    assert r.status_code == 200  # any Host once a key guards a network bind


def raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def read_all(s: socket.socket, limit: float = 10.0) -> tuple[bytes, float]:
    """Everything until the server closes the connection, and when it did (monotonic)."""
    s.settimeout(limit)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data, time.monotonic()
        data += chunk


@pytest.mark.slow
def test_a_client_trickling_its_headers_is_cut_off(guarded):
    s = raw(guarded.port)
    t0 = time.monotonic()
    s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
    closed = False
    for i in range(40):  # one header byte every 0.1 s: never complete within the deadline
        try:
            s.sendall(b"X-Slow: "[i % 8 : i % 8 + 1])
        except OSError:
            closed = True
            break
        time.sleep(0.1)
    data, t_closed = read_all(s) if not closed else (b"", time.monotonic())
    s.close()
    assert data.startswith(b"HTTP/1.1 408") or closed or data == b"", data
    assert t_closed - t0 < 3.5, "the trickling client was not cut off at the ~2 s deadline"


@pytest.mark.slow
def test_an_idle_connection_and_a_stalled_body_are_closed(guarded):
    idle = raw(guarded.port)
    t0 = time.monotonic()
    data, t_closed = read_all(idle)
    idle.close()
    assert t_closed - t0 < 3.5 and data in (
        b"",
        b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    )
    s = raw(guarded.port)
    s.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer file-key-123\r\n"
        b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"prompt": '
    )
    t0 = time.monotonic()
    data, t_closed = read_all(s)
    s.close()
    assert data.startswith(b"HTTP/1.1 408"), data
    assert b"request_timeout" in data and b"EDGE_READ_TIMEOUT" in data
    assert 0.5 < t_closed - t0 < 3.5
    assert httpx.get(guarded.url + "/health").status_code == 200  # the server is fine


# -- model files reach llama.cpp only through the validator ---------------------------------------------------
def test_a_crafted_gguf_is_refused_before_llama_cpp_sees_it(smollm2_path, tmp_path):
    """A header claiming 2^40 tensors: llama.cpp would try to allocate for them; we refuse it first."""
    import struct

    from edge.errors import ModelFormatError
    from quantize.convert import convert

    data = bytearray(smollm2_path.read_bytes()[:2_000_000])
    data[8:16] = struct.pack("<Q", 1 << 40)  # GGUF: magic, version (u32), n_tensors (u64), n_kv (u64)
    bad = tmp_path / "crafted.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="crafted.gguf: GGUF header declares 1099511627776 tensors"):
        open_engine(bad, name="crafted", n_ctx=64, n_threads=1)
    with pytest.raises(ModelFormatError, match="crafted.gguf: GGUF header declares 1099511627776 tensors"):
        convert(bad, "q4_0", tmp_path / "out", quiet=True)
    assert not any((tmp_path / "out").glob("*.gguf"))


@pytest.mark.parametrize(
    "name", ["../../../../etc/passwd", "/etc/passwd", "..", "models/../../x.gguf", "~/.ssh/id_rsa"]
)
def test_model_names_in_requests_never_reach_the_file_system(app_client, name):
    r = app_client.post("/api/show", json={"model": name})
    assert r.status_code == 404 and "root:" not in r.text
    r = app_client.post("/v1/chat/completions", json={**chat("hi"), "model": name})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
