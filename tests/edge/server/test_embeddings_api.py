"""The embedding routes against a live server on all-MiniLM-L6-v2, through the real openai and ollama
clients; every bad input is a 400/413 in its API's shape and the server keeps serving; a kiosk flow
(embed passages, retrieve, chat with the retrieved text)."""

from __future__ import annotations

import base64
import math
import os
import shutil
import struct
import time

import httpx
import ollama
import openai
import pytest

from tests.support.embed_texts import PASSAGES, QUESTIONS, SENTENCES
from tests.support.live import chat_messages, edge_env, start_server

MAX_INPUTS, MAX_TOKENS = 40, 2000  # small limits for this server, to test them


def _cos(a, b) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _from_base64(text: str) -> list[float]:
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def _norm(v) -> float:
    return math.sqrt(sum(x * x for x in v))


@pytest.fixture(scope="module")
def embed_server(minilm_gguf, tmp_path_factory):
    home = tmp_path_factory.mktemp("embed-home")
    env = edge_env(home, EDGE_EMBED_MAX_INPUTS=str(MAX_INPUTS), EDGE_EMBED_MAX_TOKENS=str(MAX_TOKENS))
    served = home / "minilm.gguf"  # served under its file's stem: "minilm"
    try:
        os.link(minilm_gguf("F32"), served)  # not a symlink: the server resolves those to the real name
    except OSError:
        shutil.copyfile(minilm_gguf("F32"), served)
    srv = start_server(home, str(served), env=env)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference(minilm_reference):
    return lambda texts: minilm_reference.encode(texts, normalize_embeddings=True).tolist()


@pytest.fixture(scope="module")
def http(embed_server):
    with embed_server.client() as c:
        yield c


def test_openai_client_float_and_base64(embed_server, reference):
    client = openai.OpenAI(base_url=embed_server.url + "/v1", api_key="none")
    ref = reference(SENTENCES)
    for fmt in ("float", "base64", None):  # None: the client asks for base64 and decodes it itself
        kw = {"encoding_format": fmt} if fmt else {}
        got = client.embeddings.create(model="minilm", input=SENTENCES, **kw)
        assert [d.index for d in got.data] == list(range(len(SENTENCES)))
        assert got.usage.prompt_tokens == got.usage.total_tokens > len(SENTENCES)
        for d, r in zip(got.data, ref):
            v = _from_base64(d.embedding) if fmt == "base64" else d.embedding
            assert _cos(v, r) >= 0.9999 and abs(_norm(v) - 1) < 1e-5
    short = client.embeddings.create(model="minilm", input="hello", dimensions=32)
    assert len(short.data[0].embedding) == 32 and abs(_norm(short.data[0].embedding) - 1) < 1e-5
    ids = client.embeddings.create(model="minilm", input=[[101, 7592, 102], [101, 2088, 102]])
    assert len(ids.data) == 2 and ids.usage.prompt_tokens == 6


def test_ollama_client_embed_and_legacy_route(embed_server, http, reference):
    client = ollama.Client(host=embed_server.url)
    got = client.embed(model="minilm", input=SENTENCES[:4])
    assert len(got.embeddings) == 4 and got.prompt_eval_count > 4 and got.total_duration > 0
    for v, r in zip(got.embeddings, reference(SENTENCES[:4])):
        assert _cos(v, r) >= 0.9999
    one = client.embed(model="minilm", input="hello", dimensions=16)
    assert len(one.embeddings[0]) == 16
    legacy = client.embeddings(model="minilm", prompt=SENTENCES[0])
    assert _cos(legacy.embedding, got.embeddings[0]) > 0.99999
    assert abs(_norm(legacy.embedding) - 1) < 1e-5  # normalised, unlike Ollama's legacy route
    load = http.post("/api/embed", json={"model": "minilm"}).json()  # no input: only loads, as Ollama
    assert load["embeddings"] == []


def test_long_input_truncated_or_refused(http):
    text = "word " * 600
    r = http.post("/v1/embeddings", json={"input": [text, "short"]})
    assert r.status_code == 200
    assert r.json()["truncated"] == [{"index": 0, "tokens": 602, "kept": 512}]
    r = http.post("/api/embed", json={"model": "minilm", "input": text, "truncate": False})
    assert r.status_code == 400 and "has 602 tokens but this model embeds at most 512" in r.json()["error"]


BAD_OPENAI = [
    ({"input": []}, "empty list"),
    ({"input": ""}, "empty string"),
    ({"input": ["a", ""]}, "item 1 is an empty string"),
    ({"input": ["a", 3]}, "item 1 is a int"),
    ({"input": ["a", None]}, "item 1 is null"),
    ({"input": {"text": "a"}}, "must be a string or a list"),
    ({"input": [[101, 102], []]}, "item 1 is an empty list of token ids"),
    ({"input": [101, 99999, 102]}, "outside this model's vocabulary"),
    ({"input": "a", "dimensions": 0}, "dimensions"),
    ({"input": "a", "dimensions": 385}, "dimensions must be between 1 and 384"),
    ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
    ({}, "input"),
]


@pytest.mark.parametrize("body, says", BAD_OPENAI)
def test_bad_openai_bodies_are_400(http, body, says):
    r = http.post("/v1/embeddings", json={"model": "minilm", **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert says in err["message"] and err["type"] == "invalid_request_error"


BAD_OLLAMA = [
    ("/api/embed", {"input": []}, "empty list"),
    ("/api/embed", {"input": ""}, "empty string"),
    ("/api/embed", {"input": ["a", 1]}, "item 1 is a int: send strings"),
    ("/api/embed", {"input": [101, 102]}, "send strings"),
    ("/api/embed", {"input": "a", "dimensions": -1}, "dimensions"),
    ("/api/embeddings", {"prompt": ""}, "empty string"),
]


@pytest.mark.parametrize("path, body, says", BAD_OLLAMA)
def test_bad_ollama_bodies_are_400(http, path, body, says):
    r = http.post(path, json={"model": "minilm", **body})
    assert r.status_code == 400, r.text
    assert says in r.json()["error"]


def test_limits_are_413_naming_the_setting(http):
    r = http.post("/v1/embeddings", json={"input": ["x"] * (MAX_INPUTS + 1)})
    assert r.status_code == 413 and "EDGE_EMBED_MAX_INPUTS" in r.json()["error"]["message"]
    r = http.post("/api/embed", json={"model": "minilm", "input": ["word " * 300] * 10})
    assert r.status_code == 413 and "EDGE_EMBED_MAX_TOKENS" in r.json()["error"]
    assert http.post("/v1/embeddings", json={"input": "still serving"}).status_code == 200


def test_embedding_model_refuses_chat_and_completions(http):
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "is an embedding model" in r.json()["error"]["message"]
    r = http.post("/v1/completions", json={"prompt": "hi"})
    assert r.status_code == 400
    r = http.post("/api/chat", json={"model": "minilm", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "is an embedding model" in r.json()["error"]
    r = http.post("/api/generate", json={"model": "minilm", "prompt": "hi"})
    assert r.status_code == 400


def test_generative_model_accepts_embeddings(server):
    r = httpx.post(server.url + "/v1/embeddings", json={"input": ["hello", "world"]}, timeout=300)
    assert r.status_code == 200, r.text
    vectors = [d["embedding"] for d in r.json()["data"]]
    assert len(vectors) == 2 and len(vectors[0]) == 576 and abs(_norm(vectors[0]) - 1) < 1e-5


def test_kiosk_flow_two_servers(embed_server, server, oracle):
    """Embed the passages on the embedding server, retrieve for a question, chat with the passage on
    the chat server (one server serving both models is the test below)."""
    client = openai.OpenAI(base_url=embed_server.url + "/v1", api_key="none")
    passages = [d.embedding for d in client.embeddings.create(model="minilm", input=PASSAGES).data]
    question = QUESTIONS[2]  # free internet
    q = client.embeddings.create(model="minilm", input=question).data[0].embedding
    best = PASSAGES[max(range(len(PASSAGES)), key=lambda j: _cos(q, passages[j]))]
    assert "Wi-Fi" in best
    messages = chat_messages(f"Answer from this text: {best}\nQuestion: {question}")
    chat = openai.OpenAI(base_url=server.url + "/v1", api_key="none").chat.completions.create(
        model="smollm2:135m-q4_1", messages=messages, max_tokens=24, temperature=0
    )
    assert chat.choices[0].message.content == oracle.chat(messages, 24)


@pytest.fixture(scope="module")
def kiosk_server(minilm_gguf, tmp_path_factory):
    """One `edge serve` of the whole store (no model named): the converted MiniLM in its models folder
    as `minilm`, next to the bundled SmolLM2; nothing loaded until a request names it."""
    home = tmp_path_factory.mktemp("kiosk-home")
    (home / "models").mkdir()
    try:
        os.link(minilm_gguf("F32"), home / "models" / "minilm.gguf")
    except OSError:
        shutil.copyfile(minilm_gguf("F32"), home / "models" / "minilm.gguf")
    srv = start_server(home, "--ctx", "1024", "--parallel", "2")
    yield srv
    srv.stop()


def test_kiosk_flow_one_server(kiosk_server, reference, oracle):
    """Both models in one process, loaded on demand by name: the openai client embeds the passages and
    a question with MiniLM, the top passage is the reference's, and the ollama client chats with SmolLM2
    about it; the answer is the in-process greedy oracle's."""
    url = kiosk_server.url
    assert httpx.get(url + "/api/ps").json()["models"] == []
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=300)
    passages = [d.embedding for d in client.embeddings.create(model="minilm", input=PASSAGES).data]
    ref_passages = reference(PASSAGES)
    for qi, question in enumerate(QUESTIONS):
        q = ollama.Client(host=url, timeout=300).embed(model="minilm", input=question).embeddings[0]
        got = max(range(len(PASSAGES)), key=lambda j: _cos(q, passages[j]))
        ref_q = reference([question])[0]
        assert got == max(range(len(PASSAGES)), key=lambda j: _cos(ref_q, ref_passages[j])), question
        if qi == 2:
            best, asked, asked_vector = PASSAGES[got], question, q
    assert "Wi-Fi" in best
    messages = chat_messages(f"Answer from this text: {best}\nQuestion: {asked}")
    chat = ollama.Client(host=url, timeout=300).chat(
        model="smollm2:135m-q4_1", messages=messages, options={"num_predict": 24, "temperature": 0}
    )
    assert chat.message.content == oracle.chat(messages, 24)
    assert chat.message.content.strip()
    served = {m["name"] for m in httpx.get(url + "/api/ps").json()["models"]}
    assert served == {"minilm:latest", "smollm2:135m-q4_1"}  # one process holds both
    again = ollama.Client(host=url, timeout=300).embed(model="minilm", input=asked, keep_alive=0).embeddings[0]
    assert again == asked_vector  # the same vector with SmolLM2 loaded too; then MiniLM unloads
    deadline = time.monotonic() + 30
    while "minilm:latest" in {m["name"] for m in httpx.get(url + "/api/ps").json()["models"]}:
        assert time.monotonic() < deadline, "keep_alive 0 on /api/embed did not unload"
        time.sleep(0.05)
