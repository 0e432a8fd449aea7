"""logprobs / top_logprobs through the real `openai` and `ollama` clients against a live `edge serve`."""

from __future__ import annotations

import math

import httpx
import ollama
import openai
import pytest

from tests.support.live import HTTP_TIMEOUT, chat_messages

pytestmark = pytest.mark.slow
MODEL = "smollm2:135m-q4_1"
GREEDY = {"temperature": 0, "repeat_penalty": 1.0}


@pytest.fixture(scope="module")
def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=HTTP_TIMEOUT, max_retries=0)


@pytest.fixture(scope="module")
def oll(server) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=HTTP_TIMEOUT)


def _check_top(entries: list[dict], k: int) -> None:
    """k distinct alternatives, best first, each <= 0; greedy: the chosen token is the first."""
    assert entries
    for e in entries:
        top = e["top_logprobs"]
        key = [str(t.get("bytes", t["token"])) for t in top]  # the ollama client keeps token and logprob only
        assert len(top) == k and len(set(key)) == k
        values = [t["logprob"] for t in top]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert top[0]["logprob"] == e["logprob"] and key[0] == str(e.get("bytes", e["token"]))


# -- OpenAI chat -------------------------------------------------------------------------------------
def test_chat_top5_and_streamed_equals_non_streamed(oai):
    kw = dict(model=MODEL, messages=chat_messages("What is the capital of France?"), temperature=0, max_tokens=12)
    r = oai.chat.completions.create(**kw, logprobs=True, top_logprobs=5)
    content = [c.model_dump() for c in r.choices[0].logprobs.content]
    _check_top(content, 5)
    assert "".join(c["token"] for c in content) == r.choices[0].message.content
    assert len(content) == r.usage.completion_tokens

    chunks = list(oai.chat.completions.create(**kw, logprobs=True, top_logprobs=5, stream=True))
    streamed = [
        c.model_dump() for ch in chunks if ch.choices and ch.choices[0].logprobs for c in ch.choices[0].logprobs.content
    ]
    assert streamed == content
    for ch in chunks:  # each chunk's entries are the tokens of its text
        if ch.choices and ch.choices[0].delta.content:
            assert "".join(c.token for c in ch.choices[0].logprobs.content) == ch.choices[0].delta.content


def test_chat_without_logprobs_has_none(oai):
    r = oai.chat.completions.create(model=MODEL, messages=chat_messages("Hi"), temperature=0, max_tokens=4)
    assert r.choices[0].logprobs is None
    chunks = list(oai.chat.completions.create(model=MODEL, messages=chat_messages("Hi"), max_tokens=4, stream=True))
    assert all(c.choices[0].logprobs is None for c in chunks if c.choices)


def test_chat_logprobs_without_top_gives_empty_lists(oai):
    r = oai.chat.completions.create(
        model=MODEL, messages=chat_messages("Hi"), temperature=0, max_tokens=4, logprobs=True
    )
    assert [c.top_logprobs for c in r.choices[0].logprobs.content] == [[]] * 4


@pytest.mark.parametrize("body", [{"logprobs": True, "top_logprobs": 21}, {"logprobs": True, "top_logprobs": -1}])
def test_chat_top_logprobs_out_of_range_is_a_400(oai, body):
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=MODEL, messages=chat_messages("Hi"), max_tokens=2, **body)
    assert "top_logprobs" in str(e.value)


def test_chat_top_logprobs_without_logprobs_is_a_400(oai):
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=MODEL, messages=chat_messages("Hi"), max_tokens=2, top_logprobs=2)
    assert e.value.body["param"] == "top_logprobs"


# -- OpenAI completions (legacy shape) ------------------------------------------------------------------
def test_completion_legacy_shape_streamed_and_not(oai):
    kw = dict(model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=8, logprobs=3)
    r = oai.completions.create(**kw)
    lp = r.choices[0].logprobs
    text = r.choices[0].text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 8
    assert "".join(lp.tokens) == text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(8)]
    for tok, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) in (3, 4) and top[tok] == value == max(top.values())  # greedy: the chosen is the best
        assert list(top.values()) == sorted(top.values(), reverse=True)

    chunks = list(oai.completions.create(**kw, stream=True))
    parts = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert sum((p.tokens for p in parts), []) == lp.tokens
    assert sum((p.token_logprobs for p in parts), []) == lp.token_logprobs
    assert sum((p.text_offset for p in parts), []) == lp.text_offset


def test_completion_logprobs_bounds_and_echo(oai):
    with pytest.raises(openai.BadRequestError):
        oai.completions.create(model=MODEL, prompt="Hi", max_tokens=2, logprobs=21)
    with pytest.raises(openai.BadRequestError) as e:
        oai.completions.create(model=MODEL, prompt="Hi", max_tokens=2, logprobs=1, echo=True)
    assert "echo" in str(e.value)
    r = oai.completions.create(model=MODEL, prompt="Hi", max_tokens=2, temperature=0, logprobs=0)
    assert all(len(t) == 1 for t in r.choices[0].logprobs.top_logprobs)  # the chosen token alone


# -- Ollama ----------------------------------------------------------------------------------------
def _ollama_entries(parts) -> list[dict]:
    return [lp.model_dump(exclude_none=True) for p in parts for lp in (p.logprobs or [])]


def test_ollama_generate_streamed_equals_non_streamed(oll):
    kw = dict(model=MODEL, prompt="The capital of France is", raw=True, options={**GREEDY, "num_predict": 8})
    whole = oll.generate(**kw, stream=False, logprobs=True, top_logprobs=4)
    entries = _ollama_entries([whole])
    _check_top(entries, 4)
    assert "".join(e["token"] for e in entries) == whole.response and len(entries) == whole.eval_count
    parts = list(oll.generate(**kw, stream=True, logprobs=True, top_logprobs=4))
    assert _ollama_entries(parts) == entries
    assert not parts[-1].logprobs  # the closing statistics carry none


def test_ollama_chat_logprobs_and_the_oracle_value(oll, oai):
    messages = chat_messages("What is the capital of Germany?")
    r = oll.chat(model=MODEL, messages=messages, stream=False, logprobs=True, options={**GREEDY, "num_predict": 10})
    entries = _ollama_entries([r])
    assert "".join(e["token"] for e in entries) == r.message.content
    assert all("top_logprobs" not in e and e["logprob"] <= 0 for e in entries)  # top_logprobs 0: none listed
    same = oai.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=10, logprobs=True)
    assert [e["logprob"] for e in entries] == pytest.approx([c.logprob for c in same.choices[0].logprobs.content])
    streamed = list(
        oll.chat(model=MODEL, messages=messages, stream=True, logprobs=True, options={**GREEDY, "num_predict": 10})
    )
    assert _ollama_entries(streamed) == entries


def test_ollama_top_logprobs_out_of_range_is_a_400(server):
    body = {"model": MODEL, "prompt": "Hi", "stream": False, "logprobs": True, "top_logprobs": 21}
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT) as http:
        r = http.post("/api/generate", json=body)
        assert r.status_code == 400 and "top_logprobs" in r.json()["error"]
        r = http.post("/api/chat", json={**body, "messages": chat_messages("Hi")})
        assert r.status_code == 400 and isinstance(r.json()["error"], str)


def test_probabilities_of_the_alternatives_are_a_distribution(oai):
    r = oai.chat.completions.create(
        model=MODEL, messages=chat_messages("Say yes."), temperature=0, max_tokens=3, logprobs=True, top_logprobs=20
    )
    for c in r.choices[0].logprobs.content:
        assert len(c.top_logprobs) == 20
        assert sum(math.exp(t.logprob) for t in c.top_logprobs) <= 1.0 + 1e-6
