"""Tool calling through the real `openai` and `ollama` clients against a live `edge serve` (SmolLM2,
whose template has no tools: the generic format). Every call the server returns must validate
against its tool's schema; bad tool input is a 400 in each API's own shape."""

from __future__ import annotations

import json

import jsonschema
import ollama
import openai
import pytest

from tests.support.live import HTTP_TIMEOUT

pytestmark = pytest.mark.slow
MODEL = "smollm2:135m-q4_1"

MOVE = {
    "type": "object",
    "properties": {
        "mode": {"type": "string", "enum": ["slow", "fast"]},
        "speed": {"type": "integer", "minimum": 1, "maximum": 9},
        "waypoints": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"x": {"type": "integer", "minimum": -5, "maximum": 5}, "y": {"type": "integer"}},
                "required": ["x", "y"],
            },
            "minItems": 1,
            "maxItems": 2,
        },
    },
    "required": ["mode", "speed", "waypoints"],
}
SAY = {"type": "object", "properties": {"text": {"type": "string", "maxLength": 24}}, "required": ["text"]}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "move", "description": "Move the robot along waypoints", "parameters": MOVE},
    },
    {"type": "function", "function": {"name": "say", "description": "Say a short sentence", "parameters": SAY}},
]
SCHEMAS = {"move": MOVE, "say": SAY}
ASK = [{"role": "user", "content": "Move fast at speed 3 to the point x=1, y=2."}]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=HTTP_TIMEOUT, max_retries=0)


def _create(client, **kw):
    args = {"model": MODEL, "messages": ASK, "tools": TOOLS, "temperature": 0, "max_tokens": 80}
    return client.chat.completions.create(**{**args, **kw})


def _valid(name: str, arguments: dict) -> None:
    jsonschema.validate(arguments, SCHEMAS[name])


def test_required_calls_validate_and_stream_the_same(client):
    r = _create(client, tool_choice="required", parallel_tool_calls=False)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    _valid(call.function.name, json.loads(call.function.arguments))

    chunks = list(_create(client, tool_choice="required", parallel_tool_calls=False, stream=True))
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id and deltas[0].type == "function" and deltas[0].function.name == call.function.name
    assert {d.index for d in deltas} == {0}
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
    fragments = [d.function.arguments for d in deltas[1:] if d.function.arguments]
    assert len(fragments) >= 3, fragments  # sent as the model writes them, not in one piece at the end
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_named_function_with_a_nested_schema(client):
    r = _create(client, tool_choice={"type": "function", "function": {"name": "move"}}, parallel_tool_calls=False)
    calls = r.choices[0].message.tool_calls
    assert calls and {c.function.name for c in calls} == {"move"}
    assert len({c.id for c in calls}) == len(calls)
    for c in calls:
        _valid("move", json.loads(c.function.arguments))


def test_logprobs_with_tools_streamed_and_not(client):
    """llama-server refuses logprobs with tools and stream; here every generated token has its entry."""
    kw = {"tool_choice": "required", "parallel_tool_calls": False, "logprobs": True, "top_logprobs": 2}
    r = _create(client, **kw)
    entries = r.choices[0].logprobs.content
    assert r.choices[0].message.tool_calls and len(entries) == r.usage.completion_tokens
    assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in entries)

    chunks = list(_create(client, **kw, stream=True, stream_options={"include_usage": True}))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert deltas and len(streamed) == chunks[-1].usage.completion_tokens
    assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in streamed)


def test_truncated_call_is_length_and_no_call(client):
    r = _create(client, tool_choice="required", max_tokens=6)
    assert r.choices[0].finish_reason == "length" and not r.choices[0].message.tool_calls


def test_loop_call_result_answer(client):
    first = _create(client, tool_choice={"type": "function", "function": {"name": "say"}}, parallel_tool_calls=False)
    (call,) = first.choices[0].message.tool_calls
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "done: the robot said it"},
    ]
    answer = _create(client, messages=history, tool_choice="none", max_tokens=30)
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls


def _deep(n: int) -> dict:
    s: dict = {"type": "string"}
    for _ in range(n):
        s = {"type": "object", "properties": {"a": s}}
    return s


def _tool(params: dict, name: str = "f") -> dict:
    return {"type": "function", "function": {"name": name, "parameters": params}}


BAD = [
    ({"tools": [{"type": "function", "function": {"description": "nameless"}}]}, "name"),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "unique"),
    ({"tools": [_tool({"type": "object", "properties": {"a": {"type": 7}}})]}, "type"),
    ({"tool_choice": {"type": "function", "function": {"name": "fly"}}}, "fly"),
    ({"tools": None, "tool_choice": "required"}, "at least one tool"),
    (
        {"tools": [_tool({"$defs": {"n": {"properties": {"n": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"})]},
        "recursive",
    ),
    ({"tools": [_tool(_deep(40))]}, "nesting"),
    ({"tools": [_tool({"type": "object", "properties": {"a": {"enum": list(range(100_000))}}})]}, ""),
    ({"tools": [_tool({"type": "object", "properties": {"a": {"type": "string", "pattern": "^(?!x)$"}}})]}, "pattern"),
]


@pytest.mark.parametrize("change,named", BAD)
def test_bad_tool_requests_are_400(client, change, named):
    body = {"model": MODEL, "messages": ASK, "tools": TOOLS, "max_tokens": 4, **change}
    if body["tools"] is None:
        del body["tools"]
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(**body)
    assert err.value.status_code in (400, 413), err.value  # 413: a body over the server's limit
    assert named in str(err.value)


def test_schema_nested_1000_deep_is_400(server):
    import httpx

    deep = '{"type": "string"}'
    for _ in range(1000):
        deep = '{"type": "object", "properties": {"a": ' + deep + "}}"
    tools = '[{"type": "function", "function": {"name": "f", "parameters": ' + deep + "}}]"
    for path in ("/v1/chat/completions", "/api/chat"):
        raw = f'{{"model": "{MODEL}", "messages": {json.dumps(ASK)}, "tools": {tools}}}'
        r = httpx.post(server.url + path, content=raw, headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code == 400, r.text
        assert "error" in r.json()


def test_tool_message_must_answer_a_call(client):
    history = [*ASK, {"role": "tool", "tool_call_id": "call_nope", "content": "?"}]
    with pytest.raises(openai.BadRequestError, match="call_nope"):
        _create(client, messages=history, max_tokens=4)


# -- Ollama ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def oclient(server) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=HTTP_TIMEOUT)


# the ollama client keeps only type, description, enum and items of each property (no maxLength)
GREET = {
    "type": "object",
    "properties": {"mood": {"type": "string", "enum": ["happy", "calm"]}, "loud": {"type": "boolean"}},
    "required": ["mood", "loud"],
}
GREET_TOOL = {"type": "function", "function": {"name": "greet", "description": "Greet visitors", "parameters": GREET}}


def test_ollama_tools_stream_and_loop(oclient):
    options = {"temperature": 0, "num_predict": 100}
    ask = [{"role": "user", "content": "Say hello to the visitors."}]
    r = oclient.chat(model=MODEL, messages=ask, tools=[GREET_TOOL], options=options)
    calls = r.message.tool_calls or []
    for c in calls:
        assert isinstance(c.function.arguments, dict)
        assert c.function.name == "greet"
        jsonschema.validate(dict(c.function.arguments), GREET)
    assert calls or r.message.content
    streamed = [
        c
        for part in oclient.chat(model=MODEL, messages=ask, tools=[GREET_TOOL], options=options, stream=True)
        for c in part.message.tool_calls or []
    ]
    # each streamed line carries whole calls (the same greedy text may differ by a token once the
    # prompt's cache is reused, so the calls are checked for validity, not equality with the first reply)
    assert [c.function.name for c in streamed] == ["greet"] * len(streamed) and (streamed or not calls)
    for c in streamed:
        jsonschema.validate(dict(c.function.arguments), GREET)
    if calls:
        history = [*ask, r.message, {"role": "tool", "content": "arrived", "tool_name": calls[0].function.name}]
        answer = oclient.chat(model=MODEL, messages=history, options={**options, "num_predict": 30})
        assert answer.message.content


def test_ollama_bad_tools_is_400(oclient):
    with pytest.raises(ollama.ResponseError) as err:
        oclient.chat(model=MODEL, messages=ASK, tools=[TOOLS[0], TOOLS[0]])
    assert err.value.status_code == 400 and "unique" in str(err.value)


def test_capabilities_report_the_format(oclient, client):
    shown = oclient.show(MODEL)
    assert "tools" not in shown.capabilities  # SmolLM2's template has no tools: the generic format
    import httpx

    body = httpx.post(str(oclient._client.base_url) + "/api/show", json={"model": MODEL}).json()
    assert body["tool_format"] == "generic"
    models = client.models.list()
    assert models.data[0].model_extra.get("capabilities") == ["completion"]
