"""Tool-call formats on the real templates of each family: detection, rendering, golden parses,
streaming, and the bad inputs that must be a 400 (no model needed)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from edge.chat.templates import ChatTemplate  # noqa: E402
from edge.chat.toolformats import detect_format, get_format  # noqa: E402
from edge.chat.tools import ToolPlan, ToolStream, render  # noqa: E402
from edge.engine.grammar import _int_range, json_schema_to_gbnf  # noqa: E402
from edge.errors import BadRequestError  # noqa: E402
from tests.support.templates import template_dir  # noqa: E402

DRIVE = {
    "type": "object",
    "properties": {
        "speed": {"type": "integer", "minimum": 1, "maximum": 10},
        "mode": {"type": "string", "enum": ["slow", "fast"]},
        "waypoints": {
            "type": "array",
            "items": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]},
        },
    },
    "required": ["speed", "mode"],
}
SAY = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
TOOLS = [
    {"type": "function", "function": {"name": "drive", "description": "Drive the robot", "parameters": DRIVE}},
    {"type": "function", "function": {"name": "say", "description": "Speak", "parameters": SAY}},
]
NAMES = {"drive", "say"}
ARGS1 = {"speed": 3, "mode": "fast"}
ARGS2 = {"text": 'She said "hi" — ünïcödé ✓'}
HISTORY = [
    {"role": "system", "content": "You drive a robot."},
    {"role": "user", "content": "Go."},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "drive", "arguments": '{"speed": 3}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "arrived"},
]

# (template file, format, what the rendered history must contain)
FAMILIES = [
    ("meta-llama-Llama-3.1-8B-Instruct", "llama3_json", ['{"name": "drive", "parameters": {"speed": 3}}', "ipython"]),
    ("meta-llama-Llama-3.2-3B-Instruct", "llama3_json", ['{"name": "drive", "parameters": {"speed": 3}}']),
    ("meta-llama-Llama-3.3-70B-Instruct", "llama3_json", ['"parameters": {"speed": 3}']),
    ("Qwen-Qwen2.5-7B-Instruct", "hermes", ['<tool_call>\n{"name": "drive", "arguments": {"speed": 3}}\n</tool_call>']),
    ("NousResearch-Hermes-3-Llama-3.1-8B-tool_use", "hermes", ["<tool_call>", "<tool_response>"]),
    ("mistralai-Mistral-Nemo-Instruct-2407", "mistral", ['[TOOL_CALLS][{"name": "drive", "arguments": {"speed": 3}']),
    ("microsoft-Phi-3.5-mini-instruct", "generic", ['{"tool_calls": [{"name": "drive", "arguments": {"speed": 3}}]}']),
    ("google-gemma-2-2b-it", "generic", ['{"tool_response": {"name": "drive", "content": "arrived"}}']),
]


@pytest.fixture(scope="module")
def templates() -> Path:
    folder, why = template_dir()
    if folder is None:
        pytest.skip(f"the llama-cpp-python sdist (real chat templates) is not available: {why}")
    return folder


@pytest.mark.parametrize("name,fmt,expected", FAMILIES)
def test_real_templates_detect_and_render(templates, name, fmt, expected):
    source = (templates / f"{name}.jinja").read_text()
    plan = ToolPlan.build(source, TOOLS, None, True)
    assert plan.format.name == fmt
    text = render(ChatTemplate(source, bos_token="<s>", eos_token="</s>"), HISTORY, plan)
    for piece in expected:
        assert piece in text, (piece, text[-600:])
    assert "Drive the robot" in text  # the tool's description reached the prompt
    if fmt == "mistral":  # its template insists on 9-character ids
        assert re.search(r'"id": "[A-Za-z0-9]{9}"', text)


def test_phi4_format_is_detected_from_its_marker():
    # Phi-4-mini's template is not in the sdist; its marker is what detection keys on
    source = "{% for m in messages %}{{ m.content }}{% endfor %}{% if tools %}<|tool|>{{ tools }}<|/tool|>{% endif %}"
    assert detect_format(source + "<|tool_call|>").name == "phi4"
    assert detect_format("{{ messages }}").name == "generic" and detect_format(None).name == "generic"


# -- golden parses: (format, model text, calls, content) -------------------------------------------
def _j(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


GOLDEN = [
    # two calls, nested quotes and unicode
    (
        "hermes",
        f'<tool_call>\n{{"name": "drive", "arguments": {_j(ARGS1)}}}\n</tool_call>\n'
        f'<tool_call>\n{{"name": "say", "arguments": {_j(ARGS2)}}}\n</tool_call>',
        [("drive", ARGS1), ("say", ARGS2)],
        "",
    ),
    # text, a call, then text
    (
        "hermes",
        f'Sure.\n<tool_call>\n{{"name": "say", "arguments": {_j(ARGS2)}}}\n</tool_call>\nDone.',
        [("say", ARGS2)],
        "Sure.\n\nDone.",
    ),
    ("hermes", "No tools needed: 2 < 3 and <tool is not a tag.", [], "No tools needed: 2 < 3 and <tool is not a tag."),
    ("llama3_json", f'<|python_tag|>{{"name": "drive", "parameters": {_j(ARGS1)}}}', [("drive", ARGS1)], ""),
    (
        "llama3_json",
        f' {{"name": "say", "parameters": {_j(ARGS2)}}} Then I waited.',
        [("say", ARGS2)],
        " Then I waited.",
    ),
    (
        "mistral",
        f'[TOOL_CALLS][{{"name": "drive", "arguments": {_j(ARGS1)}}}, {{"name": "say", "arguments": {_j(ARGS2)}}}]',
        [("drive", ARGS1), ("say", ARGS2)],
        "",
    ),
    ("mistral", f'[{{"name": "say", "arguments": {_j(ARGS2)}}}]', [("say", ARGS2)], ""),
    (
        "phi4",
        f'<|tool_call|>[{{"name": "drive", "arguments": {_j(ARGS1)}}}, {{"name": "say", "arguments": {_j(ARGS2)}}}]'
        "<|/tool_call|>All set.",
        [("drive", ARGS1), ("say", ARGS2)],
        "All set.",
    ),
    (
        "generic",
        _j({"tool_calls": [{"name": "drive", "arguments": ARGS1}, {"name": "say", "arguments": ARGS2}]}),
        [("drive", ARGS1), ("say", ARGS2)],
        "",
    ),
    ("generic", _j({"response": ARGS2["text"]}), [], ARGS2["text"]),
    # an unknown function is not a call
    ("hermes", '<tool_call>\n{"name": "fly", "arguments": {}}\n</tool_call>', [], ""),
    # the model's own spelling: blanks, escapes, numbers json.dumps writes otherwise
    (
        "generic",
        '{ "tool_calls": [ {"name": "drive", "arguments": { "speed":3,"mode" : "fast", "waypoints": '
        '[{"x": 1.50}, {"x":-2E1}]}}, {"name":"say","arguments":{"text": "She said \\"hi\\" \\u2014 '
        '\\u00fcn\\u00efc\\u00f6d\\u00e9 \\u2713"}} ]}',
        [("drive", {**ARGS1, "waypoints": [{"x": 1.5}, {"x": -20.0}]}), ("say", ARGS2)],
        "",
    ),
]

# cut at max_tokens in the middle of a call: no call, only the text before it
TRUNCATED = [
    ("hermes", 'Moving.<tool_call>\n{"name": "drive", "arguments": {"speed": 3, "mo', "Moving."),
    ("hermes", f'<tool_call>\n{{"name": "say", "arguments": {_j(ARGS2)}}}\n</tool_', ""),
    ("llama3_json", '<|python_tag|>{"name": "drive", "parameters": {"spe', ""),
    ("mistral", f'[TOOL_CALLS][{{"name": "say", "arguments": {_j(ARGS2)}}}, {{"name": "dri', ""),
    ("phi4", '<|tool_call|>[{"name": "say", "argum', ""),
    ("generic", '{"tool_calls": [{"name": "drive", "arguments": {"speed": 3', ""),
    ("generic", '{"response": "Half an ans', "Half an ans"),
]


def _plan(fmt: str, choice="auto") -> ToolPlan:
    from edge.chat.tools import parse_tool_choice, parse_tools

    tools = parse_tools(TOOLS)
    return ToolPlan(get_format(fmt), tools, parse_tool_choice(choice, tools))


@pytest.mark.parametrize("fmt,text,calls,content", GOLDEN)
def test_golden_parse(fmt, text, calls, content):
    parsed = _plan(fmt).parse(text)
    assert [(c.name, c.arguments) for c in parsed.calls] == calls
    assert parsed.content == content


@pytest.mark.parametrize("fmt,text,content", TRUNCATED)
def test_truncated_call_gives_no_call(fmt, text, content):
    parsed = _plan(fmt).parse(text)
    assert parsed.calls == [] and parsed.content == content


@pytest.mark.parametrize("fmt,text,calls,content", GOLDEN)
def test_streamed_pieces_give_the_same_calls_and_text(fmt, text, calls, content):
    stream = ToolStream(_plan(fmt))
    events = []
    for i in range(0, len(text), 3):
        events += stream.feed(text[i : i + 3])
    events += stream.finish()
    assert "".join(e[1] for e in events if e[0] == "content") == content
    done = [e[2] for e in events if e[0] == "call"]
    assert [(c.name, c.arguments) for c in done] == calls and len({c.id for c in done}) == len(calls)
    whole = _plan(fmt).parse(text).calls
    for i, call in enumerate(done):  # start (id, name), then fragments adding up to the whole reply's arguments
        (start,) = [e for e in events if e[0] == "start" and e[1] == i]
        assert start[2:] == (call.id, call.name)
        assert "".join(e[2] for e in events if e[0] == "args" and e[1] == i) == call.arguments_json
        assert call.arguments_json == json.dumps(whole[i].arguments, ensure_ascii=False) == whole[i].text


@pytest.mark.parametrize("fmt,text,calls,content", [g for g in GOLDEN if g[2]])
def test_arguments_stream_as_they_are_written(fmt, text, calls, content):
    """Fed a few characters at a time, each call's arguments go out in several fragments, the first
    long before the call is complete."""
    stream = ToolStream(_plan(fmt))
    batches = [stream.feed(text[i : i + 3]) for i in range(0, len(text), 3)] + [stream.finish()]
    for index in range(len(calls)):
        fed = [n for n, batch in enumerate(batches) for e in batch if e[0] == "args" and e[1] == index]
        (done,) = [n for n, batch in enumerate(batches) for e in batch if e[0] == "call" and e[1] == index]
        assert len(fed) >= 3 and fed[0] < done - 2, (index, fed, done)


@pytest.mark.parametrize("fmt", ["hermes", "llama3_json", "mistral", "phi4", "generic"])
def test_grammars_build_for_every_choice(fmt):
    for choice in ("auto", "required", {"type": "function", "function": {"name": "say"}}):
        fields = _plan(fmt, choice).sampling(lambda text: [7])
        assert "root ::=" in fields["grammar"]
        lazy = choice == "auto" and fmt != "generic"
        assert bool(fields.get("grammar_triggers")) == lazy
        assert fields["speculate"] is False  # calls are not drafted (see ToolPlan.sampling)
    assert _plan(fmt, "none").sampling(lambda text: [7]) == {}


def test_lazy_triggers_fire_only_at_the_marker():
    (pattern,) = get_format("hermes").trigger_patterns()
    assert re.match(pattern, "Let me check.<tool_call>\n")
    assert not re.match(pattern, "Let me check.<tool_call>oops")
    bare = get_format("llama3_json").trigger_patterns()[1]
    assert re.match(bare, '{"name": ') and re.match(bare, "{") and not re.match(bare, '{"name": "dr')


# -- grammar: integer ranges ---------------------------------------------------------------------
@pytest.mark.parametrize("lo,hi", [(0, 0), (1, 10), (-50, 7), (-1000, -3), (99, 1000), (5, 123456)])
def test_integer_ranges(lo, hi):
    rx = re.compile(_int_range(lo, hi).replace('"', "").replace(" ", ""))
    for v in [*range(lo - 15, lo + 15), *range(hi - 15, hi + 15), 0, -1, 10**6]:
        assert bool(rx.fullmatch(str(v))) == (lo <= v <= hi), v


# -- bad input: each a BadRequestError naming the problem ----------------------------------------
def _deep(n: int) -> dict:
    s: dict = {"type": "string"}
    for _ in range(n):
        s = {"type": "object", "properties": {"a": s}}
    return s


HOSTILE = [
    (
        {"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"},
        "recursive",
    ),
    (_deep(1000), "nesting"),
    ({"type": "string", "enum": [str(i) for i in range(100_000)]}, "enum"),
    ({"type": "string", "pattern": "^(?=x)[a-z]+$"}, "pattern"),
    ({"type": "string", "pattern": "^\\d+$"}, "pattern"),
    ({"type": "string", "format": "email"}, "format"),
    ({"type": "number", "minimum": 0}, "minimum"),
    ({"type": "object", "not": {}}, "'not'"),
    ({"type": "array", "items": {"type": "string"}, "maxItems": 100000}, "maxItems"),
    ({"type": "strnig"}, "type"),
]


@pytest.mark.parametrize("schema,named", HOSTILE)
def test_hostile_schemas_are_400s_that_name_the_problem(schema, named):
    with pytest.raises(BadRequestError, match=re.escape(named)):
        json_schema_to_gbnf(schema)
    params = schema if "$defs" in schema else {"type": "object", "properties": {"a": schema}}
    tool = {"type": "function", "function": {"name": "f", "parameters": params}}
    with pytest.raises(BadRequestError) as err:
        ToolPlan.build(None, [tool], "required", True)
    assert err.value.param == "tools" and named in err.value.message


BAD = [
    ([{"type": "function", "function": {"description": "no name"}}], None, "name"),
    ([TOOLS[0], TOOLS[0]], None, "unique"),
    ([{"type": "function", "function": {"name": "f", "parameters": "nope"}}], None, "JSON object"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}], None, "object"),
    (TOOLS, {"type": "function", "function": {"name": "fly"}}, "not in `tools`"),
    (None, "required", "at least one tool"),
    (TOOLS, "sometimes", "tool_choice"),
]


@pytest.mark.parametrize("tools,choice,named", BAD)
def test_bad_tools_and_choices(tools, choice, named):
    with pytest.raises(BadRequestError, match=re.escape(named)):
        ToolPlan.build(None, tools, choice, True)


def test_tool_message_must_answer_a_call():
    plan = ToolPlan.build(None, TOOLS, None, True)
    bad = [*HISTORY[:3], {"role": "tool", "tool_call_id": "call_404", "content": "?"}]
    with pytest.raises(BadRequestError, match="call_404"):
        plan.messages(bad)
    assert plan.messages(HISTORY)[-1]["content"].startswith('{"tool_response"')


def test_too_large_a_grammar_is_refused_before_every_tool_is_built(monkeypatch):
    """Grammar building is bounded: the size is checked after each tool, so 128 tools of ~70 KB of
    grammar each stop at the 8th, not after all of them."""
    from edge.engine import grammar

    big = {
        "type": "object",
        "properties": {f"p{j}": {"type": "string", "enum": [f"v{j}_{k}" for k in range(500)]} for j in range(7)},
    }
    tools = [{"type": "function", "function": {"name": f"t{i}", "parameters": big}} for i in range(128)]
    built = []
    real = grammar._converter

    def counting():
        conv = real()
        resolve = conv.resolve_refs
        conv.resolve_refs = lambda schema, url: built.append(url) or resolve(schema, url)
        return conv

    monkeypatch.setattr(grammar, "_converter", counting)
    with pytest.raises(BadRequestError, match="over 524288 characters") as err:
        ToolPlan.build(None, tools, "required", True).sampling(lambda text: [7])
    assert err.value.param == "tools" and len(built) < 16
