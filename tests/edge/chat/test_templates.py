"""Chat templates: HF-identical rendering, injection payloads without side effects, bounds, fallbacks."""

from __future__ import annotations

import pytest

from edge.chat.templates import ChatTemplate
from edge.errors import BadRequestError
from edge.formats.gguf import read_gguf_meta, token_text

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": 'Tell me a joke about  <tags> & "quotes" {{ 7*7 }} {% raw %} ünïcødé 🙂'},
    ],
]

# HF-style features the real templates use: tojson with HF semantics (no HTML escaping, unicode
# kept, indent), loopcontrols, trim/lstrip blocks, namespace, raise_exception, {% generation %}.
FEATURE_TEMPLATE = """{%- set ns = namespace(n=0) -%}
{{ bos_token }}
{% if tools %}Tools: {{ tools | tojson(indent=2) }}
{% endif %}
{% for m in messages %}
    {% if m.role == 'system' %}{% continue %}{% endif %}
    {% set ns.n = ns.n + 1 %}
    <{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}{{ m.content | trim }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}{{ eos_token }}
    {% if loop.index > 5 %}{% break %}{% endif %}
{% endfor %}
{{ messages | tojson }}|{{ ns.n }}
{% if add_generation_prompt %}<assistant>{% endif %}"""

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Météo <now>",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def _hf_render(template: str, messages, *, bos: str, eos: str, add_generation_prompt=True, tools=None) -> str:
    """transformers' apply_chat_template on the same template text (the oracle; tests only)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, bos: 1, eos: 2}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
        bos_token=bos, eos_token=eos, unk_token="<unk>", chat_template=template,
    )  # fmt: skip
    return tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt)


@pytest.fixture(scope="module")
def smollm2_template(smollm2_path) -> ChatTemplate:
    meta = read_gguf_meta(smollm2_path)
    bos = token_text(smollm2_path, meta, meta.kv["tokenizer.ggml.bos_token_id"])
    eos = token_text(smollm2_path, meta, meta.kv["tokenizer.ggml.eos_token_id"])
    assert meta.chat_template and "<|im_start|>" in meta.chat_template
    return ChatTemplate(meta.chat_template, bos_token=bos, eos_token=eos, family=meta.architecture)


@pytest.mark.slow  # the first call imports transformers (and torch): ~15 s
@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_template_matches_transformers(smollm2_template, messages, add_generation_prompt):
    ours = smollm2_template.render(messages, add_generation_prompt=add_generation_prompt)
    theirs = _hf_render(
        smollm2_template.source, messages, bos=smollm2_template.bos_token, eos=smollm2_template.eos_token,
        add_generation_prompt=add_generation_prompt,
    )  # fmt: skip
    assert ours == theirs
    assert ours.endswith("<|im_start|>assistant\n") == add_generation_prompt
    assert "{{ 7*7 }}" in ours or "7*7" not in str(messages)  # message text is data, never template code


@pytest.mark.slow
@pytest.mark.parametrize("tools", [None, TOOLS])
def test_hf_helpers_match_transformers(tools):
    messages = CONVERSATIONS[2] + [{"role": "system", "content": "skipped"}]
    t = ChatTemplate(FEATURE_TEMPLATE, bos_token="<s>", eos_token="</s>")
    ours = t.render(messages, tools=tools)
    assert ours == _hf_render(FEATURE_TEMPLATE, messages, bos="<s>", eos="</s>", tools=tools)
    assert '<tags> & \\"quotes\\"' in ours and "🙂" in ours  # HF tojson: no HTML escaping, unicode kept


def test_raise_exception_becomes_bad_request_with_its_message():
    t = ChatTemplate(
        "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}ok",
        bos_token="",
        eos_token="",
    )
    assert t.render([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(BadRequestError, match="Conversation roles must alternate user/assistant"):
        t.render([{"role": "assistant", "content": "x"}])


@pytest.mark.parametrize(
    "source", ["{% for m in messages %}", "{{ messages[0].content | no_such_filter }}", "{{ 1 / 0 }}"]
)
def test_broken_templates_are_bad_requests(source):
    with pytest.raises(BadRequestError, match="chat template"):
        ChatTemplate(source, bos_token="", eos_token="").render([{"role": "user", "content": "x"}])


# CVE-2024-34359 class: each payload, if it ran, would create the marker file.
INJECTIONS = [
    "{{ self.__init__.__globals__.__builtins__.__import__('os').popen('touch MARKER').read() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "{{ joiner.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "{{ namespace.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "{{ lipsum.__globals__['os'].popen('touch MARKER').read() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}{{ ''.__class__.__mro__[1].__subclasses__()[0]('touch MARKER') }}",
    "{% for c in ().__class__.__base__.__subclasses__() %}{% if c.__name__ == 'catch_warnings' %}"
    "{{ c()._module.__builtins__['__import__']('os').system('touch MARKER') }}{% endif %}{% endfor %}",
    "{{ raise_exception.__globals__['__builtins__']['__import__']('os').system('touch MARKER') }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ (messages|attr('__class__')).__mro__ }}{{ ''|attr('__class__') }}",
    "{% set x = messages.append({'role': 'x'}) %}{{ messages.pop() }}",  # immutable sandbox: no mutation
    "{{ strftime_now.__globals__.os.system('touch MARKER') }}",
]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_template_injection_fails_without_side_effect(payload, tmp_path):
    marker = tmp_path / "pwned"
    source = payload.replace("MARKER", str(marker))
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(BadRequestError):
        ChatTemplate(source, bos_token="", eos_token="").render(messages)
    assert not marker.exists()
    assert messages == [{"role": "user", "content": "hi"}]


RESOURCE_BOMBS = {
    "repeat": "{{ 'a' * 100000000 }}",
    "power": "{{ 2 ** 100000000 }}",
    "int-growth": "{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}{{ ns.x }}",
    "width": "{{ 'a' | center(1000000000) }}",
    "percent-width": "{{ '%999999999d' % 1 }}",
    "format-width": "{{ '{:999999999}'.format(1) }}",
    "format-filter": "{{ '%999999999s' | format('x') }}",
    "doubling-tilde": "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "doubling-plus": "{% set ns = namespace(s=['ab']) %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
    "doubling-replace": "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s.replace('a', 'aa') | replace('b', 'bb') %}{% endfor %}",
    "join": "{% set x = 'y' * 1000000 %}{{ [x, x, x, x, x, x, x, x, x, x] | join('-') }}",
    "recursion": "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('ab') }}",
    "deep-recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "output": "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}",
    "many-sets": "{% set a = 'y' * 4000000 %}" + "".join(f"{{% set a{i} = a ~ '{i}' %}}" for i in range(40)),
    "endless-loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
}


@pytest.mark.parametrize("source", RESOURCE_BOMBS.values(), ids=RESOURCE_BOMBS.keys())
def test_render_size_memory_and_time_are_bounded(source):
    t = ChatTemplate(source, bos_token="", eos_token="", timeout=0.5, max_chars=1_000_000)
    with pytest.raises(BadRequestError, match="chat template"):
        t.render([{"role": "user", "content": "hi"}])


def test_a_timed_out_render_is_stopped_not_left_running():
    import threading
    import time

    t = ChatTemplate(RESOURCE_BOMBS["endless-loops"], bos_token="", eos_token="", timeout=0.2)
    with pytest.raises(BadRequestError, match="did not finish"):
        t.render([{"role": "user", "content": "hi"}])
    for _ in range(50):  # the worker gets an async exception between bytecodes; give it a moment
        if not any(th.name == "edge-chat-template" for th in threading.enumerate()):
            break
        time.sleep(0.02)
    assert not any(th.name == "edge-chat-template" for th in threading.enumerate())


def test_limits_leave_real_conversations_alone(smollm2_template):
    long_chat = [{"role": "user" if i % 2 == 0 else "assistant", "content": "word " * 2000} for i in range(50)]
    text = smollm2_template.render(long_chat)
    assert text.count("<|im_start|>") == 52 and len(text) > 500_000


def test_template_source_size_is_capped():
    with pytest.raises(BadRequestError, match="limit"):
        ChatTemplate("x" * (300 * 1024), bos_token="", eos_token="")


def test_content_parts_are_joined_like_llama_cpp_and_media_refused():
    t = ChatTemplate("{% for m in messages %}[{{ m.content }}]{% endfor %}", bos_token="", eos_token="")
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    assert t.render([{"role": "user", "content": parts}]) == "[one\ntwo]"
    with pytest.raises(BadRequestError, match="image_url"):
        t.render([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])


@pytest.mark.parametrize("bad", [[], "hello", [{"content": "no role"}], [["user", "x"]]])
def test_malformed_messages_are_bad_requests(bad):
    with pytest.raises(BadRequestError, match="messages"):
        ChatTemplate(None, bos_token="", eos_token="").render(bad)


def test_prompt_drops_template_bos_when_tokenizer_adds_it():
    t = ChatTemplate("{{ bos_token }}{{ messages[0].content }}", bos_token="<s>", eos_token="</s>")
    assert t.render([{"role": "user", "content": "x"}]) == "<s>x"
    assert t.prompt([{"role": "user", "content": "x"}], add_bos=True) == "x"
    assert t.prompt([{"role": "user", "content": "x"}], add_bos=False) == "<s>x"


def test_gemma_without_template_uses_gemma_turns(gemma3_path):
    meta = read_gguf_meta(gemma3_path)
    assert meta.chat_template is None  # the bundled Gemma-3-270M is a base model
    bos = token_text(gemma3_path, meta, meta.kv["tokenizer.ggml.bos_token_id"])
    t = ChatTemplate(meta.chat_template, bos_token=bos, eos_token="<eos>", family=meta.architecture)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a colour."},
    ]
    assert t.is_fallback
    assert t.render(messages) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nName a colour.<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert t.prompt(messages, add_bos=True).startswith("<start_of_turn>user\n")  # gemma3 adds BOS itself


def test_other_families_without_template_get_a_plain_transcript():
    t = ChatTemplate("", bos_token="<s>", eos_token="</s>", family="llama")
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    assert t.render(messages) == "System: Be kind.\n\nUser: Hi\n\nAssistant:"
    assert t.render(messages, add_generation_prompt=False) == "System: Be kind.\n\nUser: Hi"
