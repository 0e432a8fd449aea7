"""Errors as each API's clients expect them, auth, the loading window, a full queue and disconnects."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
from starlette.testclient import TestClient

from edge.config import Settings
from edge.errors import ModelFormatError
from edge.server import create_app
from tests.support.live import HTTP_TIMEOUT, chat_messages, start_server

MODEL = "smollm2:135m-q4_1"
KEY = "s3cret-key"
LONG = {
    "model": MODEL,
    "messages": chat_messages("Write a very long story about a cat and a dog."),
    "max_tokens": 800,
    "temperature": 0,
    "stream": True,
}


# -- shapes, on the shared server ---------------------------------------------------------------------
@pytest.mark.slow
def test_validation_errors_are_400_in_each_shape(server):
    with server.client() as http:
        r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and "messages.0.role" in err["message"]
        r = http.post("/api/chat", json={"model": MODEL, "messages": [], "options": {"temperature": "hot"}})
        assert r.status_code == 400 and "options.temperature" in r.json()["error"]
        r = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": -1})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


@pytest.mark.slow
def test_what_the_server_cannot_honour_is_refused_not_ignored(server):
    with server.client() as http:
        r = http.post(
            "/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}
        )
        assert r.status_code == 400 and "images" in r.json()["error"]
        r = http.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": chat_messages("x"),
                "tools": [{"type": "function", "function": {"name": "f"}}] * 2,  # duplicate names
            },
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
        r = http.post("/api/pull", json={"model": "llama3.1:8b"})
        assert r.status_code == 400 and "never downloads" in r.json()["error"]


@pytest.mark.slow
def test_bad_json_is_400(server):
    with server.client() as http:
        r = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "error" in r.json() and isinstance(r.json()["error"], dict)
        r = http.post("/api/generate", content=b"{not json")
        assert r.status_code == 400 and isinstance(r.json()["error"], str)


@pytest.mark.slow
def test_unknown_route_and_method(server):
    with server.client() as http:
        assert http.get("/v1/nothing").status_code == 404
        assert http.get("/api/chat").status_code == 405


@pytest.mark.slow
def test_foreign_host_header_is_refused_on_a_loopback_bind(server):
    """DNS rebinding: a web page at evil.example must not reach a server bound to 127.0.0.1."""
    r = httpx.get(server.url + "/api/tags", headers={"Host": "evil.example"})
    assert r.status_code == 403 and "Host" in r.json()["error"]
    assert httpx.get(server.url + "/api/version", headers={"Host": f"localhost:{server.port}"}).status_code == 200


@pytest.mark.slow
def test_oversized_body_is_413_every_time(server):
    """Over real TCP: the client writes the whole 5 MiB before it reads. Closing with that body unread made
    the kernel reset the connection and the 413 was sometimes lost (2 runs in 4); the server now reads
    and drops it first, so every answer arrives and the connection is reused."""
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for _ in range(8):
            r = http.post("/v1/completions", content=b"x" * (5 * 1024 * 1024))
            assert r.status_code == 413 and "EDGE_MAX_BODY" in r.json()["error"]["message"]
            assert r.headers.get("connection") != "close"
        assert http.get("/api/version").status_code == 200


@pytest.mark.slow
def test_metrics_count_requests_by_route_and_status(server):
    before = server.metric("edge_time_to_first_token_seconds_count")
    httpx.post(
        server.url + "/api/generate",
        json={"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 2}},
        timeout=HTTP_TIMEOUT,
    )
    assert server.metric("edge_time_to_first_token_seconds_count") == before + 1
    httpx.get(server.url + "/api/version")
    httpx.post(server.url + "/api/show", json={"model": MODEL})
    httpx.post(server.url + "/api/show", json={"model": "no-such-model"})
    text = httpx.get(server.url + "/metrics").text
    assert 'edge_requests_total{route="/api/version",status="200"}' in text
    assert 'edge_requests_total{route="/api/show",status="200"}' in text
    assert 'edge_requests_total{route="/api/show",status="404"}' in text
    for name in (
        "edge_prompt_tokens_total",
        "edge_generated_tokens_total",
        "edge_time_to_first_token_seconds_bucket",
        "edge_time_per_output_token_seconds_bucket",
        "edge_queue_depth",
        "edge_busy_slots",
    ):
        assert name in text, name


# -- the loading window, in process ----------------------------------------------------------------------
def test_health_is_503_while_loading_then_200(smollm2_path, tmp_path):
    from edge.engine import open_engine

    gate = threading.Event()

    def slow_opener(path, **kw):
        assert gate.wait(120), "the test never released the loader"
        return open_engine(path, **kw)

    settings = Settings(model=str(smollm2_path), home=tmp_path, ctx=256, threads=1)
    with TestClient(create_app(settings, opener=slow_opener), base_url="http://127.0.0.1") as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "model_loading"
        answer = {}
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 1}}
        asker = threading.Thread(target=lambda: answer.update(r=c.post("/api/chat", json={**body, "stream": False})))
        asker.start()  # a request for the loading model waits for that one load, as Ollama's do
        time.sleep(0.3)
        assert asker.is_alive() and c.get("/health").status_code == 503
        gate.set()
        deadline = time.monotonic() + 120
        while c.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "the model did not load"
            time.sleep(0.05)
        asker.join(120)
        assert answer["r"].status_code == 200 and answer["r"].json()["done"]


def test_a_model_that_fails_to_load_says_why(smollm2_path, tmp_path):
    def broken(path, **kw):
        raise ModelFormatError(f"{path} is truncated; download it again")

    settings = Settings(model=str(smollm2_path), home=tmp_path)
    with TestClient(create_app(settings, opener=broken), base_url="http://127.0.0.1") as c:
        deadline = time.monotonic() + 30
        while (r := c.get("/health")).status_code == 503:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert r.status_code == 422 and "truncated" in r.json()["error"]["message"]


# -- auth, a full queue and disconnects: one slot, no queue, an API key ---------------------------------
@pytest.fixture(scope="module")
def tight(edge_home):
    srv = start_server(edge_home, "--parallel", "1", "--queue", "0", "--ctx", "1024", "--api-key", KEY)
    yield srv
    srv.stop()


AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.mark.slow
def test_api_key_is_required_on_every_route_but_health(tight):
    assert httpx.get(tight.url + "/health").status_code == 200
    for path in ("/v1/models", "/api/tags", "/metrics", "/"):
        r = httpx.get(tight.url + path)
        assert r.status_code == 401, path
    assert httpx.get(tight.url + "/v1/models").headers["www-authenticate"] == "Bearer"
    assert isinstance(httpx.get(tight.url + "/api/tags").json()["error"], str)
    assert httpx.get(tight.url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(tight.url + "/v1/models", headers=AUTH).status_code == 200
    assert httpx.get(tight.url + "/api/tags", headers={"X-Api-Key": KEY}).status_code == 200
    client = openai.OpenAI(base_url=tight.url + "/v1", api_key=KEY, timeout=HTTP_TIMEOUT, max_retries=0)
    assert MODEL in [m.id for m in client.models.list().data]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=tight.url + "/v1", api_key="nope", max_retries=0).models.list()


@pytest.mark.slow
def test_full_queue_is_503_with_retry_after_and_a_disconnect_frees_the_slot(tight):
    with httpx.Client(base_url=tight.url, headers=AUTH, timeout=HTTP_TIMEOUT) as a:
        with a.stream("POST", "/v1/chat/completions", json=LONG) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")  # the one slot is now busy
            assert tight.metric("edge_busy_slots", AUTH) == 1
            r = httpx.post(tight.url + "/v1/chat/completions", headers=AUTH, json={**LONG, "stream": False})
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "queue_full"
            r = httpx.post(
                tight.url + "/api/chat", headers=AUTH, json={"model": MODEL, "messages": chat_messages("Hi")}
            )
            assert r.status_code == 503 and isinstance(r.json()["error"], str) and r.headers["retry-after"]
        # leaving the `with` closed the connection mid-stream
    deadline = time.monotonic() + 30
    while tight.metric("edge_busy_slots", AUTH) != 0:
        assert time.monotonic() < deadline, "the disconnected stream still holds its slot"
        time.sleep(0.05)
    assert tight.metric("edge_generations_cancelled_total", AUTH) >= 1
    r = httpx.post(
        tight.url + "/v1/chat/completions",
        headers=AUTH,
        timeout=HTTP_TIMEOUT,
        json={
            "model": MODEL,
            "messages": chat_messages("What is the capital of France?"),
            "max_tokens": 16,
            "temperature": 0,
        },
    )
    assert r.status_code == 200 and "Paris" in r.json()["choices"][0]["message"]["content"]


@pytest.mark.slow
def test_a_non_streaming_disconnect_frees_the_slot(tight):
    body = {**LONG, "stream": False}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(tight.url + "/v1/chat/completions", headers=AUTH, json=body, timeout=2.0)
    deadline = time.monotonic() + 30
    while tight.metric("edge_busy_slots", AUTH) != 0:
        assert time.monotonic() < deadline, "the abandoned request still holds its slot"
        time.sleep(0.05)
