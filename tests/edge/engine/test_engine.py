"""The GGUF engine on the real bundled SmolLM2-135M-Instruct Q4_1, through real llama.cpp."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

import pytest

from edge.engine import open_engine
from edge.engine.base import Delta, Finish, SamplingParams
from edge.engine.grammar import JSON_OBJECT_GBNF, json_schema_to_gbnf
from edge.errors import (
    BadRequestError,
    ContextOverflowError,
    DependencyMissingError,
    ModelFormatError,
    NotFoundError,
    QueueFullError,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
GREEDY = SamplingParams(temperature=0, max_tokens=32)
CTX = 1024


@pytest.fixture(scope="module")
def model_path(smollm2_path) -> Path:
    return smollm2_path


@pytest.fixture(scope="module")
def engine(model_path):
    eng = open_engine(model_path, name="smollm2:135m-q4_1", n_ctx=CTX, n_parallel=4, n_threads=1, queue_size=4)
    yield eng
    eng.close()


def chat_prompt(engine, user: str, system: str | None = None) -> list[int]:
    text = ""
    if system:
        text += f"<|im_start|>system\n{system}<|im_end|>\n"
    text += f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    return engine.tokenize(text, add_special=False, parse_special=True)


async def run(engine, prompt, params):
    deltas, finish = [], None
    async for ev in engine.generate(prompt, params):
        if isinstance(ev, Delta):
            deltas.append(ev.text)
        else:
            finish = ev
    assert isinstance(finish, Finish)
    return "".join(deltas), finish, deltas


def gen(engine, prompt, params=GREEDY):
    return asyncio.run(run(engine, prompt, params))


@contextlib.contextmanager
def samplers_changed(batcher, change):
    """While active, every sampler the batcher makes goes through `change` first."""
    make = batcher.make_sampler

    def changed(p):
        sampler = make(p)
        change(sampler)
        return sampler

    batcher.make_sampler = changed
    try:
        yield
    finally:
        batcher.make_sampler = make


def test_model_info_from_gguf_metadata(engine):
    info = engine.info
    assert info.format == "gguf" and info.family == "llama" and info.quantization == "Q4_1"
    assert 100_000_000 < info.parameter_count < 200_000_000
    assert info.n_ctx == CTX and info.n_ctx_train == 8192
    assert "<|im_start|>" in info.chat_template
    assert info.eos_token == "<|im_end|>"
    assert info.metadata["general.architecture"] == "llama"
    assert "tokenizer.ggml.tokens" not in info.metadata
    assert engine.load_ns > 0
    assert engine.stats()["slots"] == 4


def test_tokenize_roundtrip(engine):
    ids = engine.tokenize("Hello, world! 😀", add_special=False)
    assert engine.detokenize(ids) == "Hello, world! 😀"


@pytest.mark.slow
def test_greedy_matches_high_level_llama(engine, model_path):
    """Our loop and llama-cpp-python's own `Llama` (the reference) pick the same 32 greedy tokens."""
    from llama_cpp import Llama

    prompt = chat_prompt(engine, "What is the capital of France? Answer in one sentence.")
    text, fin, _ = gen(engine, prompt)
    again, _, _ = gen(engine, prompt)
    assert again == text, "greedy decoding must be deterministic"
    ref = Llama(str(model_path), n_ctx=CTX, n_threads=1, verbose=False)
    try:
        out = ref.create_completion(prompt, max_tokens=32, temperature=0.0, repeat_penalty=1.0)
    finally:
        ref.close()
    assert text == out["choices"][0]["text"]
    assert fin.completion_tokens == out["usage"]["completion_tokens"]


def test_seed_makes_sampling_reproducible(engine):
    prompt = chat_prompt(engine, "Write a short poem about the sea.")
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234, max_tokens=24)
    first, _, _ = gen(engine, prompt, params)
    second, _, _ = gen(engine, prompt, params)
    assert first == second
    others = {
        gen(engine, prompt, SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=s, max_tokens=24))[0]
        for s in (1, 2, 3)
    }
    assert len(others | {first}) > 1, "different seeds should not all give the same sample"


@pytest.mark.slow
def test_concurrent_generations_match_single(engine):
    questions = ["Name three fruits.", "What is 2 + 2?", "Say hello in French.", "What color is the sky?"]
    prompts = [chat_prompt(engine, q) for q in questions]
    params = SamplingParams(temperature=0, max_tokens=32)
    alone = [gen(engine, p, params)[0] for p in prompts]

    async def together():
        return await asyncio.gather(*(run(engine, p, params) for p in prompts))

    both = [t for t, _, _ in asyncio.run(together())]
    for solo, batched in zip(alone, both):
        prefix = os.path.commonprefix([solo, batched])
        # batched kernels may flip a near-tie late; the answers must still be the same ones
        assert len(prefix) >= min(len(solo), 40), f"cross-talk? {solo!r} vs {batched!r}"
    assert len(set(both)) == 4


def test_queue_full_and_cancel_free_the_slot(model_path):
    eng = open_engine(model_path, name="one", n_ctx=256, n_parallel=1, n_threads=1, queue_size=0)
    try:

        async def main():
            prompt = chat_prompt(eng, "Tell me a long story about a dragon.")
            stream = eng.generate(prompt, SamplingParams(temperature=0, max_tokens=200))
            first = await stream.__anext__()
            assert isinstance(first, Delta)
            with pytest.raises(QueueFullError):
                eng.generate(prompt, GREEDY)
            await stream.aclose()
            for _ in range(400):
                if eng.stats()["busy"] == 0:
                    break
                await asyncio.sleep(0.01)
            assert eng.stats()["busy"] == 0
            return await run(eng, prompt, SamplingParams(temperature=0, max_tokens=4))

        text, fin, _ = asyncio.run(main())
        assert fin.completion_tokens == 4 and fin.reason == "length"
    finally:
        eng.close()


def test_prefix_reuse_evaluates_only_new_tokens(engine):
    system = "You are a helpful kiosk assistant in a museum. " * 12
    p1 = chat_prompt(engine, "Where are the toilets?", system=system)
    p2 = chat_prompt(engine, "When do you close?", system=system)
    shared = len(os.path.commonprefix([p1, p2]))
    assert shared > 100
    gen(engine, p1)
    _, fin, _ = gen(engine, p2)
    assert fin.cached_tokens == shared
    assert fin.prompt_tokens == len(p2)


def test_stop_string_is_cut(engine):
    prompt = chat_prompt(engine, "Count from one to ten in words, separated by commas.")
    full, _, _ = gen(engine, prompt)
    cut_at = full.find(" ", 10)
    assert cut_at > 0, full
    stop = full[cut_at : cut_at + 3]
    text, fin, _ = gen(engine, prompt, SamplingParams(temperature=0, max_tokens=32, stop=(stop,)))
    assert fin.reason == "stop"
    assert text == full[: full.find(stop)]


def test_utf8_is_never_split(engine):
    prompt = engine.tokenize("Emojis: 😀🎉🚀🌍 😀🎉🚀🌍 😀🎉🚀🌍 😀", add_special=False)
    text, fin, deltas = gen(engine, prompt, SamplingParams(temperature=0, max_tokens=24))
    assert all("\ufffd" not in d for d in deltas)
    assert any(ord(ch) > 0xFFFF for ch in text), f"expected emoji continuation, got {text!r}"


def test_max_tokens_gives_length(engine):
    prompt = chat_prompt(engine, "Write a long essay about computers.")
    _, fin, _ = gen(engine, prompt, SamplingParams(temperature=0, max_tokens=5))
    assert fin.reason == "length" and fin.completion_tokens == 5


def test_end_of_generation_gives_stop(engine):
    # A grammar that is complete after "yes" leaves the model only its end-of-generation token, so the
    # stop does not hang on which words a 135M model's greedy decoding happens to pick on this CPU.
    prompt = chat_prompt(engine, "Reply with the single word: yes")
    text, fin, _ = gen(engine, prompt, SamplingParams(temperature=0, max_tokens=64, grammar='root ::= "yes"'))
    assert text == "yes" and fin.reason == "stop" and fin.completion_tokens < 64


@pytest.mark.slow
def test_grammar_forces_json(engine):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    prompt = chat_prompt(engine, "Describe a person as JSON.")
    text, fin, _ = gen(
        engine, prompt, SamplingParams(temperature=0, max_tokens=64, grammar=json_schema_to_gbnf(schema))
    )
    assert fin.reason == "stop", text
    doc = json.loads(text)
    assert set(doc) == {"name", "age"} and isinstance(doc["age"], int)
    text, fin, _ = gen(engine, prompt, SamplingParams(temperature=0, max_tokens=96, grammar=JSON_OBJECT_GBNF))
    if fin.reason == "stop":
        assert isinstance(json.loads(text), dict)
    assert text.lstrip().startswith("{")


def test_bad_grammar_is_a_bad_request(engine):
    async def main():
        engine.generate([1, 2], SamplingParams(grammar="root ::= ("))

    with pytest.raises(BadRequestError):
        asyncio.run(main())


def test_prompt_longer_than_context(engine):
    prompt = engine.tokenize("word " * (CTX + 10), add_special=False)

    async def main():
        engine.generate(prompt, GREEDY)

    with pytest.raises(ContextOverflowError) as err:
        asyncio.run(main())
    assert str(len(prompt)) in err.value.message and str(CTX) in err.value.message


def test_open_engine_rejects_what_it_cannot_serve(tmp_path):
    with pytest.raises(NotFoundError):
        open_engine(tmp_path / "missing.gguf", name="x")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ModelFormatError):
        open_engine(bad, name="x")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 8)
    with pytest.raises(ModelFormatError):
        open_engine(truncated, name="x")
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    (onnx_dir / "model.onnx").write_bytes(b"\x08\x01")
    # a folder is routed to the ONNX backend, which refuses a bogus export (or says onnxruntime is missing)
    with pytest.raises((ModelFormatError, DependencyMissingError)):
        open_engine(onnx_dir, name="x")


@pytest.mark.slow
def test_gemma3_sliding_window_model_reuses_prefix_correctly(gemma3_path):
    """Gemma-3 (iSWA KV cache, base model without a chat template): reuse must not change the output."""
    eng = open_engine(gemma3_path, name="gemma3:270m-q4_k_m", n_ctx=512, n_parallel=1, n_threads=1)
    try:
        assert eng.info.family == "gemma3" and eng.info.quantization == "Q4_K_M"
        assert eng.info.chat_template is None or "start_of_turn" in eng.info.chat_template
        head = "The history of the city of Paris begins in prehistoric times. " * 4
        p1 = eng.tokenize(head + "In the Middle Ages,")
        p2 = eng.tokenize(head + "During the Renaissance,")
        shared = len(os.path.commonprefix([p1, p2]))
        params = SamplingParams(temperature=0, max_tokens=12)
        fresh, _, _ = gen(eng, p2, params)
        gen(eng, p1, params)
        reused, fin, _ = gen(eng, p2, params)
        assert fin.cached_tokens == shared > 40
        assert reused == fresh
    finally:
        eng.close()


def test_large_vocabulary_greedy_takes_the_argmax_path_and_picks_the_same_tokens(gemma3_path, engine):
    """Gemma-3 (262k tokens): plain greedy reads the argmax of the logits in place instead of the native
    candidate copy; the text must equal the native greedy sampler's, token for token."""
    assert engine._batcher._argmax is None  # SmolLM2's 49k vocabulary keeps the native path (no numpy)
    eng = open_engine(gemma3_path, name="gemma3:270m-q4_k_m", n_ctx=512, n_parallel=1, n_threads=1)
    try:
        batcher = eng._batcher
        assert batcher.n_vocab > 200_000 and batcher._argmax is not None
        for p, fast in (
            (SamplingParams(temperature=0), True),
            (SamplingParams(temperature=0, repeat_penalty=1.1), False),
            (SamplingParams(temperature=0.7), False),
        ):
            sampler = batcher.make_sampler(p)
            assert (sampler.argmax is not None) == fast, p
            batcher.free_sampler(sampler)
        prompt = eng.tokenize("The history of the city of Paris begins")
        params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
        fast, fin, _ = gen(eng, prompt, params)
        with samplers_changed(batcher, lambda sampler: setattr(sampler, "argmax", None)):  # the native path
            slow, fin2, _ = gen(eng, prompt, params)
        assert fin.completion_tokens == fin2.completion_tokens == 48
        assert fast == slow and fast.strip()
    finally:
        eng.close()


def test_grammar_rejection_sampling_equals_grammar_first(engine):
    """The fast path (sample, then check the token against the grammar) must pick what applying the
    grammar to every candidate first picks (greedy)."""
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}}, "required": ["city"]}
    params = SamplingParams(temperature=0, max_tokens=32, grammar=json_schema_to_gbnf(schema))
    prompt = chat_prompt(engine, "Which city is the capital of Italy? Answer in JSON.")
    fast, fin, _ = gen(engine, prompt, params)
    # penalized forces the [grammar, ...] chain for every token
    with samplers_changed(engine._batcher, lambda sampler: setattr(sampler, "penalized", True)):
        slow, _, _ = gen(engine, prompt, params)
    assert fast == slow and fin.reason == "stop"
    assert isinstance(json.loads(fast)["city"], str)


def test_backend_import_skips_the_high_level_package():
    """Cold start: the engine needs llama_cpp's ctypes API only, not `Llama` with numpy and jinja2."""
    import subprocess
    import sys

    code = (
        "import sys, edge.engine.llamacpp; "
        "print(sorted(m for m in ('llama_cpp.llama', 'numpy', 'jinja2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


_LOG_DURING_LOAD = """
import json, sys
from pathlib import Path
import edge.engine.llamacpp as lc
from edge.errors import ModelFormatError
L = lc.L
lc._init_backend()
lines = []

@L.llama_log_callback
def keep(level, text, _user):
    lines.append((level, text.decode("utf-8", "replace")))

L.llama_log_set(keep, None)  # a callback of the caller's, as quantize.progress sets one
lc.LlamaCppBatcher(Path(sys.argv[1]), n_ctx=256, n_parallel=1, n_threads=1, n_threads_batch=1).free()
during = len(lines)
try:
    lc.LlamaCppBatcher(Path(sys.argv[2]), n_ctx=256, n_parallel=1, n_threads=1, n_threads_batch=1)
except ModelFormatError:
    pass
print(json.dumps({"during_load": during, "after_failed_load": [t for lvl, t in lines[during:] if lvl == 4]}))
"""


def test_loading_keeps_the_log_out_of_python_but_a_failed_load_explains_itself(model_path, tmp_path):
    """Cold start: llama.cpp's ~2,300 debug lines of a load never reach a Python callback (each one
    would take the GIL from the thread importing the HTTP stack); the caller's callback is set again
    afterwards, and a load that fails runs again with it, so llama.cpp's error reaches it."""
    import subprocess
    import sys

    bad = tmp_path / "no-architecture.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)  # a valid empty header: llama.cpp itself refuses it
    env = {k: v for k, v in os.environ.items() if k != "EDGE_LLAMA_LOG"}
    out = subprocess.run(
        [sys.executable, "-c", _LOG_DURING_LOAD, str(model_path), str(bad)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    got = json.loads(out.stdout)
    assert got["during_load"] < 50, got  # ~2,300 with the Python callback on
    assert any("unknown model architecture" in line for line in got["after_failed_load"]), got


def test_a_non_streaming_generation_gets_its_text_in_one_piece(engine):
    """stream=False: no per-token wake-ups; the same text and counts, one Delta, then the Finish."""
    prompt = chat_prompt(engine, "Name three colours.")
    params = SamplingParams(max_tokens=24, temperature=0.0)
    streamed, fin_s, pieces = gen(engine, prompt, params)

    async def held():
        return [ev async for ev in engine.generate(prompt, params, stream=False)]

    events = asyncio.run(held())
    assert len(pieces) > 1 and [type(e) for e in events] == [Delta, Finish]
    assert events[0].text == streamed and events[0].n_tokens == fin_s.completion_tokens
    assert events[1].completion_tokens == fin_s.completion_tokens and events[1].reason == fin_s.reason
