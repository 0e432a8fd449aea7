"""The real `ollama` client against a live `edge serve` on loopback, answers checked for content."""

from __future__ import annotations

import json

import httpx
import ollama
import pytest

from tests.support.live import HTTP_TIMEOUT, SYSTEM, chat_messages

pytestmark = pytest.mark.slow
MODEL = "smollm2:135m-q4_1"
GREEDY = {"temperature": 0, "repeat_penalty": 1.0}  # the oracle's sampler (Ollama's default penalty is 1.1)
TIMINGS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


@pytest.fixture(scope="module")
def client(server) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=HTTP_TIMEOUT)


def test_generate_answers_and_reports_timings(client):
    r = client.generate(
        model=MODEL,
        prompt="What is the capital of France?",
        system=SYSTEM,
        stream=False,
        options={**GREEDY, "num_predict": 24},
    )
    assert "Paris" in r.response
    assert r.done and r.done_reason == "stop"
    for key in TIMINGS:
        assert isinstance(r[key], int) and r[key] >= 0, key
    assert r.eval_count > 0 and r.eval_duration > 0 and r.total_duration >= r.eval_duration
    assert r.prompt_eval_count > 0


def test_chat_greedy_equals_the_engine(client, oracle):
    messages = chat_messages("What is the capital of Germany?")
    r = client.chat(model=MODEL, messages=messages, stream=False, options={**GREEDY, "num_predict": 20})
    assert r.message.role == "assistant"
    assert r.message.content == oracle.chat(messages, 20)
    assert "Berlin" in r.message.content


def test_streaming_chat_matches_non_streaming(client):
    messages = chat_messages("What is the capital of Germany?")
    whole = client.chat(model=MODEL, messages=messages, stream=False, options={**GREEDY, "num_predict": 20})
    parts = list(client.chat(model=MODEL, messages=messages, stream=True, options={**GREEDY, "num_predict": 20}))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert parts[-1].done_reason == "stop" and parts[-1].eval_count == whole.eval_count


def test_streaming_generate(client):
    parts = list(
        client.generate(
            model=MODEL,
            prompt="What is the capital of France?",
            system=SYSTEM,
            stream=True,
            options={**GREEDY, "num_predict": 24},
        )
    )
    assert "Paris" in "".join(p.response for p in parts)
    assert parts[-1].done and all(parts[-1][k] is not None for k in TIMINGS)


def test_stream_is_ndjson_by_default(server):
    body = {"model": MODEL, "prompt": "Write a long story about a cat.", "options": {**GREEDY, "num_predict": 3}}
    with server.client() as http, http.stream("POST", "/api/generate", json=body) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert [o["done"] for o in lines] == [False] * (len(lines) - 1) + [True]
    assert lines[-1]["done_reason"] == "length" and lines[-1]["eval_count"] == 3


def test_the_classic_curl_example_works_with_the_alias(server):
    """curl http://localhost:11434/api/generate -d '{"model": "llama3.1:8b", "prompt": "Hello!"}'"""
    r = httpx.post(
        server.url.replace("127.0.0.1", "localhost") + "/api/generate",
        timeout=HTTP_TIMEOUT,
        content=json.dumps({"model": "llama3.1:8b", "prompt": "Hello!", "options": {"num_predict": 8}}),
    )
    assert r.status_code == 200
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines[-1]["done"] and "".join(o["response"] for o in lines).strip()


def test_num_predict_stops_with_length(client):
    r = client.generate(
        model=MODEL, prompt="Write a long story about a cat.", stream=False, options={**GREEDY, "num_predict": 4}
    )
    assert r.done_reason == "length" and r.eval_count == 4


def test_stop_option_cuts_the_text(client):
    r = client.generate(
        model=MODEL,
        prompt="Count from one to ten in words, separated by commas.",
        system=SYSTEM,
        stream=False,
        options={**GREEDY, "num_predict": 40, "stop": ["four"]},
    )
    assert "four" not in r.response and "five" not in r.response


def test_format_json_gives_json(client):
    r = client.generate(
        model=MODEL,
        prompt="Describe Paris as a JSON object with keys city and country.",
        format="json",
        stream=False,
        options={**GREEDY, "num_predict": 60},
    )
    if r.done_reason == "stop":
        assert isinstance(json.loads(r.response), dict)
    else:
        assert r.response.lstrip().startswith("{")


def test_list_shows_details(client):
    models = {m.model: m for m in client.list().models}
    m = models[MODEL]
    assert m.details.format == "gguf" and m.details.family == "llama"
    assert m.details.parameter_size == "134.52M" and m.details.quantization_level == "Q4_1"
    assert m.size > 90_000_000 and len(m.digest) == 64
    assert "gemma3:270m-q4_k_m" in models  # the store's other bundled model is listed, as Ollama lists disk
    alias = models["llama3.1:8b"]  # the alias the home maps, listed under its own name like `ollama cp`
    assert (alias.details, alias.digest, alias.size) == (m.details, m.digest, m.size)


def test_show_describes_the_model(client):
    r = client.show(MODEL)
    assert "<|im_start|>" in r.template
    assert r.details.parameter_size == "134.52M"
    assert r.modelinfo["general.architecture"] == "llama"
    assert r.modelinfo["general.parameter_count"] == 134515008
    assert r.capabilities == ["completion"]


def test_ps_and_version(client, server):
    ps = client.ps()
    assert [m.model for m in ps.models] == [MODEL]
    assert ps.models[0].context_length == 1024
    assert httpx.get(server.url + "/api/version").json()["version"]


def test_root_says_ollama_is_running(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert httpx.head(server.url + "/").status_code == 200


def test_unknown_model_is_404_in_ollama_shape(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="mistral:7b", messages=chat_messages("Hi"))
    assert e.value.status_code == 404
    assert MODEL in e.value.error


def test_empty_prompt_loads_like_ollama(server):
    r = httpx.post(server.url + "/api/generate", json={"model": MODEL}, timeout=30).json()
    assert r["done"] and r["done_reason"] == "load" and r["response"] == ""


def test_prefix_reuse_evaluates_only_new_tokens(client):
    """A kiosk's long system prompt: the second request evaluates only what follows the shared prefix."""
    system = SYSTEM + " " + " ".join(f"Rule {i}: answer briefly and politely, in plain English." for i in range(40))
    first = client.chat(
        model=MODEL,
        stream=False,
        options={**GREEDY, "num_predict": 4},
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "What is 2+2?"}],
    )
    second = client.chat(
        model=MODEL,
        stream=False,
        options={**GREEDY, "num_predict": 4},
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "Name a fruit."}],
    )
    assert first.prompt_eval_count > 400
    assert second.prompt_eval_count < 20, second.prompt_eval_count


def test_num_ctx_bounds_the_window(client):
    def run(num_ctx: int):
        return client.generate(
            model=MODEL, prompt="Once upon a time", raw=True, stream=False, options={**GREEDY, "num_ctx": num_ctx}
        )

    small, larger = run(16), run(20)
    assert small.done_reason == larger.done_reason == "length"
    assert 0 < small.eval_count < 16 and larger.eval_count == small.eval_count + 4
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model=MODEL, prompt="word " * 40, raw=True, options={"num_ctx": 16})
    assert e.value.status_code == 400 and "num_ctx" in e.value.error
