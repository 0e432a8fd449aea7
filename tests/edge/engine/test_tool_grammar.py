"""Tool grammars in the llama.cpp engine: SmolLM2 (ChatML) prompted through Qwen 2.5's real template, so
the hermes grammar runs from the first token (required) and lazily from `<tool_call>` (auto,
llama_sampler_init_grammar_lazy_patterns); and SmolLM2's own template (the generic format), where a
named function must give exactly one call."""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import sys
from pathlib import Path

import jsonschema
import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from edge.chat.templates import ChatTemplate  # noqa: E402
from edge.chat.tools import ToolPlan, render  # noqa: E402
from edge.engine import open_engine  # noqa: E402
from edge.engine.base import Delta, Finish, SamplingParams  # noqa: E402
from edge.lightimport import llama_module  # noqa: E402
from edge.server.prompts import chat_prompt, tool_chat_prompt  # noqa: E402
from tests.support.templates import template_dir  # noqa: E402

pytestmark = pytest.mark.slow
L = llama_module("llama_cpp")
PARAMS = {
    "type": "object",
    "properties": {
        "room": {"type": "string", "enum": ["kitchen", "hall"]},
        "speed": {"type": "integer", "minimum": 1, "maximum": 3},
    },
    "required": ["room", "speed"],
}
TOOLS = [{"type": "function", "function": {"name": "go", "description": "Go to a room", "parameters": PARAMS}}]
ASK = [{"role": "user", "content": "Go to the kitchen slowly."}]


@pytest.fixture(scope="module")
def qwen_template() -> str:
    folder, why = template_dir()
    if folder is None:
        pytest.skip(f"the llama-cpp-python sdist (real chat templates) is not available: {why}")
    return (folder / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()


@pytest.fixture(scope="module")
def engine(smollm2_path):
    eng = open_engine(smollm2_path, name="smollm2", n_ctx=1024, n_parallel=1, n_threads=1)
    yield eng
    eng.close()


def _call(i: int, room: str) -> dict:
    fn = {"name": "go", "arguments": {"room": room, "speed": 1}}
    return {"role": "assistant", "content": None, "tool_calls": [{"id": f"c{i}", "type": "function", "function": fn}]}


# SmolLM2 continues this history with "<tool_response>...": it copies the tags it saw, not the call
FEW_SHOT = [
    {"role": "user", "content": "Go to the kitchen."},
    _call(1, "kitchen"),
    {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    {"role": "user", "content": "Go to the hall."},
    _call(2, "hall"),
    {"role": "tool", "tool_call_id": "c2", "content": "ok"},
    {"role": "user", "content": "Go to the kitchen."},
]


def _run(engine, template: str, choice, messages=ASK, triggers=None) -> tuple[str, Finish, ToolPlan]:
    plan = ToolPlan.build(template, TOOLS, choice, False)
    assert plan.format.name == "hermes"
    text = render(ChatTemplate(template, bos_token=None, eos_token="<|im_end|>"), messages, plan)
    prompt = engine.tokenize(text, add_special=False, parse_special=True)
    fields = plan.sampling(lambda t: engine.tokenize(t, add_special=False, parse_special=True))
    if triggers is not None:
        fields = {**fields, "grammar_triggers": triggers, "grammar_trigger_tokens": ()}
    params = dataclasses.replace(SamplingParams(temperature=0, max_tokens=48), **fields)

    async def go():
        parts, fin = [], None
        async for ev in engine.generate(prompt, params):
            if isinstance(ev, Delta):
                parts.append(ev.text)
            elif isinstance(ev, Finish):
                fin = ev
        return "".join(parts), fin

    out, fin = asyncio.run(go())
    return out, fin, plan


def test_required_hermes_grammar_gives_a_valid_call(engine, qwen_template):
    text, fin, plan = _run(engine, qwen_template, "required")
    assert text.startswith("<tool_call>") and fin.reason == "stop", text
    (call,) = plan.parse(text).calls
    assert call.name == "go"
    jsonschema.validate(call.arguments, PARAMS)


def test_auto_writes_freely_until_the_trigger_then_the_grammar_holds(engine, qwen_template):
    free, _, _ = _run(engine, qwen_template, "auto", FEW_SHOT)
    assert free.startswith("<tool_response>"), free  # unconstrained: no trigger, no grammar
    # a trigger on "<tool_" (a prefix of the hermes marker) fires inside that text: from there on the
    # lazy grammar (llama_sampler_init_grammar_lazy_patterns) forces the rest into a valid call
    text, fin, plan = _run(engine, qwen_template, "auto", FEW_SHOT, triggers=(r"^[\s\S]*?(<tool_)$",))
    assert text.startswith("<tool_call>") and fin.reason == "stop", text
    (call,) = plan.parse(text).calls
    jsonschema.validate(call.arguments, PARAMS)


# -- a named function: exactly one call ----------------------------------------------------------
GRIP = {
    "type": "object",
    "properties": {"action": {"type": "string", "enum": ["open", "close"]}},
    "required": ["action"],
}
GRIP_TOOLS = [
    {"type": "function", "function": {"name": "grip", "description": "Open or close the gripper", "parameters": GRIP}},
    {"type": "function", "function": {"name": "say", "description": "Say a sentence", "parameters": PARAMS}},
]
NAMED = {"type": "function", "function": {"name": "grip"}}
ONE_CALL = '{"tool_calls": [{"name": "grip", "arguments": {"action": "open"}}'


def _grammar_allows(engine, grammar: str, text: str) -> bool:
    """Whether llama.cpp's grammar sampler lets the tokens of `text` through, one by one (as NativeSampler
    checks a sampled token)."""
    b = engine._batcher
    sampler = b.make_sampler(SamplingParams(temperature=0, grammar=grammar))
    try:
        for token in b.tokenize(text, add_special=False, parse_special=False):
            sampler._one[0].id, sampler._one[0].logit = token, 0.0
            sampler._one_arr.size, sampler._one_arr.selected = 1, -1
            L.llama_sampler_apply(sampler.grammar, ctypes.byref(sampler._one_arr))
            if sampler._one[0].logit == float("-inf"):
                return False
            L.llama_sampler_accept(sampler.grammar, token)
        return True
    finally:
        b.free_sampler(sampler)


@pytest.mark.parametrize("parallel", [None, True, False])
def test_a_named_function_grammar_allows_one_call_only(engine, parallel):
    plan = ToolPlan.build(engine.info.chat_template, GRIP_TOOLS, NAMED, parallel)
    assert plan.format.name == "generic"
    grammar = plan.sampling(lambda t: [0])["grammar"]
    assert _grammar_allows(engine, grammar, ONE_CALL + "]}")
    assert not _grammar_allows(engine, grammar, ONE_CALL + ", {")  # no second call, parallel or not
    required = ToolPlan.build(engine.info.chat_template, GRIP_TOOLS, "required", parallel)
    assert _grammar_allows(engine, required.sampling(lambda t: [0])["grammar"], ONE_CALL + ", {") == (
        parallel is not False
    )


def test_a_named_call_after_prefix_reuse_is_one_call(engine):
    """A slot that held another chat keeps their common first tokens and evaluates the rest of the
    prompt in one batch: the logits differ from a cold start's in the last decimals (llama.cpp's
    kernels depend on the batch size), enough to flip a near tie. On this prompt the flipped greedy
    path repeated grip(open), grip(close), ... until max_tokens when the grammar allowed several
    calls, and the reply held no call."""
    template = ChatTemplate.for_model(engine.info)
    messages = [{"role": "user", "content": "Open the gripper."}]
    other = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hi"}]
    plan = ToolPlan.build(template.source, GRIP_TOOLS, NAMED, None)
    prompt, fields = tool_chat_prompt(engine, template, messages, plan)
    params = dataclasses.replace(SamplingParams(temperature=0, max_tokens=160), **fields)

    async def go(ids, p):
        parts, fin = [], None
        async for ev in engine.generate(ids, p):
            if isinstance(ev, Delta):
                parts.append(ev.text)
            elif isinstance(ev, Finish):
                fin = ev
        return "".join(parts), fin

    asyncio.run(go(chat_prompt(engine, template, other), SamplingParams(temperature=0, max_tokens=4)))
    text, fin = asyncio.run(go(prompt, params))
    assert fin.cached_tokens > 0  # the slot's prefix was reused
    assert fin.reason == "stop", text
    (call,) = plan.parse(text).calls
    assert call.name == "grip"
    jsonschema.validate(call.arguments, GRIP)
