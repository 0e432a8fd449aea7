"""The ONNX backend (edge/engine/onnx/backend.py): sampler features, refusals, and a live `edge serve`.

The served model is the bundled SmolLM2 (GGUF -> unpack -> onnx:int4 by edge-quantize); the oracle
for the streamed answer is the same folder run greedily in this process.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from edge.engine.base import Delta, Finish, SamplingParams
from edge.engine.onnx.sampling import NumpySampler
from edge.errors import BadRequestError
from tests.support.live import chat_messages, start_server

LOGITS = np.array([0.0, 3.0, 2.9, -1.0, 1.0, 2.0], dtype=np.float32)  # (vocab,) best: 1, then 2, 5


def test_greedy_and_top_k_1_are_argmax():
    assert NumpySampler(SamplingParams(temperature=0)).sample(LOGITS) == 1
    assert NumpySampler(SamplingParams(temperature=1.0, top_k=1, seed=3)).sample(LOGITS) == 1


def test_seeded_sampling_repeats_and_filters_hold():
    p = SamplingParams(temperature=1.5, top_k=3, top_p=1.0, min_p=0.0, seed=42)
    a = [NumpySampler(p).sample(LOGITS) for _ in range(5)]
    s1, s2 = NumpySampler(p), NumpySampler(p)
    assert [s1.sample(LOGITS) for _ in range(20)] == [s2.sample(LOGITS) for _ in range(20)]
    assert set(a) <= {1, 2, 5}
    draws = {
        NumpySampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.5, seed=i)).sample(LOGITS)
        for i in range(50)
    }
    assert draws <= {1, 2}  # min_p 0.5: only tokens with p >= p_max / 2
    assert (
        len(
            {
                NumpySampler(SamplingParams(temperature=5.0, top_k=0, top_p=1.0, min_p=0.0, seed=i)).sample(LOGITS)
                for i in range(200)
            }
        )
        == 6
    )


def test_penalties_move_the_greedy_choice():
    s = NumpySampler(SamplingParams(temperature=0, repeat_penalty=2.0))
    assert s.sample(LOGITS) == 1
    assert s.sample(LOGITS) == 2  # 3.0 / 2 = 1.5 < 2.9
    f = NumpySampler(SamplingParams(temperature=0, frequency_penalty=0.5, presence_penalty=0.0))
    assert [f.sample(LOGITS) for _ in range(3)] == [1, 2, 1]


def test_grammar_is_refused_clearly():
    with pytest.raises(BadRequestError, match="not supported by the ONNX backend"):
        NumpySampler(SamplingParams(grammar='root ::= "a"'))


@pytest.fixture(scope="module")
def smollm2_int4(smollm2_path, module_tmp) -> Path:
    from quantize.onnx.export import export_onnx

    out = module_tmp("onnx-smollm2")
    [r] = export_onnx(smollm2_path, ["onnx:int4"], out, quiet=True, name="smollm2")  # GGUF in: unpacked first
    return r.path


@pytest.mark.slow
def test_engine_streams_and_refuses_grammar(smollm2_int4):
    from edge.engine import open_engine
    from edge.engine.onnx.backend import OnnxEngine

    engine = open_engine(smollm2_int4, name="smollm2-onnx", n_ctx=512, n_threads=1)
    assert isinstance(engine, OnnxEngine) and engine.info.format == "onnx" and engine.info.chat_template

    async def run(params):
        text, fin = "", None
        async for ev in engine.generate(engine.tokenize("The capital of France is"), params):
            if isinstance(ev, Delta):
                text += ev.text
            else:
                fin = ev
        return text, fin

    try:
        text, fin = asyncio.run(run(SamplingParams(max_tokens=12, temperature=0)))
        assert isinstance(fin, Finish) and fin.completion_tokens > 0 and text.strip()
        again, fin2 = asyncio.run(run(SamplingParams(max_tokens=12, temperature=0)))
        assert fin2.cached_tokens > 0  # the slot's KV buffer is reused
        with pytest.raises(BadRequestError, match="ONNX backend"):
            asyncio.run(run(SamplingParams(grammar='root ::= "x"')))
    finally:
        engine.close()


@pytest.mark.slow
def test_openai_client_streams_from_edge_serve(smollm2_int4, tmp_path):
    import openai

    from edge.chat.templates import ChatTemplate
    from edge.engine import open_engine

    messages = chat_messages("What is the capital of France?")
    engine = open_engine(smollm2_int4, name="oracle", n_ctx=1024, n_threads=1)
    try:
        template = ChatTemplate.for_model(engine.info)
        ids = engine.tokenize(template.prompt(messages, add_bos=engine.info.add_bos), add_special=False)

        async def greedy() -> str:
            out = ""
            async for ev in engine.generate(ids, SamplingParams(max_tokens=24, temperature=0)):
                if isinstance(ev, Delta):
                    out += ev.text
            return out

        want = asyncio.run(greedy())
    finally:
        engine.close()

    server = start_server(tmp_path / "home", str(smollm2_int4), "--ctx", "1024")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
        with pytest.raises(openai.BadRequestError, match="does not compute embeddings"):  # a chat-only model
            client.embeddings.create(model=smollm2_int4.name, input="hello")
        for name in (smollm2_int4.name + "+desk", smollm2_int4.name + "+desk@0.5"):  # LoRA: GGUF models only
            with pytest.raises(openai.BadRequestError, match="ONNX model: LoRA adapters apply to GGUF models only"):
                client.completions.create(model=name, prompt="Hi", max_tokens=2)
        stream = client.chat.completions.create(
            model=smollm2_int4.name, messages=messages, temperature=0, max_tokens=24, stream=True
        )
        got = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    finally:
        server.stop()
    assert got == want and "Paris" in got, (got, want)


@pytest.mark.slow
def test_logprobs_from_the_onnx_logits(smollm2_int4):
    """The ONNX backend reports logprobs as the GGUF one does: raw logits, aligned with the text."""
    from edge.engine import open_engine

    engine = open_engine(smollm2_int4, name="smollm2-onnx", n_ctx=256, n_threads=1)

    async def run(params, stream):
        deltas = []
        async for ev in engine.generate(engine.tokenize("The capital of France is"), params, stream=stream):
            if isinstance(ev, Delta):
                deltas.append(ev)
        return deltas

    try:
        params = SamplingParams(max_tokens=8, temperature=0, logprobs=True, top_logprobs=4)
        deltas = asyncio.run(run(params, True))
        entries = [e for d in deltas for e in d.logprobs]
        assert len(entries) == 8
        assert b"".join(e.piece for e in entries).decode() == "".join(d.text for d in deltas)
        for e in entries:
            values = [t.logprob for t in e.top]
            assert len({t.token for t in e.top}) == 4 and values == sorted(values, reverse=True) and values[0] <= 0
            assert e.top[0].token == e.token and e.top[0].logprob == e.logprob
        # held (non-streamed): the same tokens; the values move a little (int4 kernels differ between the
        # whole-prompt run and the one-token step that follows prefix reuse), not the logprob code
        held = [e for d in asyncio.run(run(params, False)) for e in d.logprobs]
        assert [e.token for e in held] == [e.token for e in entries]
    finally:
        engine.close()
