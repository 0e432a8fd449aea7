"""Per-token log probabilities in the engine: the numbers (against llama.cpp's own), their alignment
with the streamed text, and the plain path that must not touch them."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from edge.engine import logprobs as lp_mod
from edge.engine.base import Delta, Finish, SamplingParams, TokenLogprob
from edge.engine.detok import AlignedTextStream
from edge.engine.logprobs import log_softmax_at

PROMPT = "The capital of France is"


# -- the numbers, on a row we know ----------------------------------------------------------------
def test_log_softmax_matches_the_definition_and_orders_ties_by_id():
    row = np.array([1.0, 3.0, 2.0, 3.0, -np.inf, 0.5], dtype=np.float32)  # (vocab,)
    lse = math.log(sum(math.exp(x) for x in row if x != -np.inf))
    chosen, top = log_softmax_at(row, 2, 4)
    assert chosen == pytest.approx(2.0 - lse, abs=1e-6)
    assert [i for i, _ in top] == [1, 3, 2, 0]  # 1 and 3 tie: the lower id first, as greedy picks
    assert [v for _, v in top] == pytest.approx([3.0 - lse, 3.0 - lse, 2.0 - lse, 1.0 - lse], abs=1e-6)
    assert log_softmax_at(row, 4, 0) == (TokenLogprob.FLOOR, [])  # no chance: a finite floor, never -inf
    assert len(log_softmax_at(row, 0, 50)[1]) == 6  # asking more than the vocabulary gives all of it


def test_token_text_drops_an_incomplete_utf8_tail():
    assert TokenLogprob(1, " caf\xc3\xa9".encode("latin-1"), -1.0).text == " café"
    assert TokenLogprob(1, b"\xf0\x9f", -1.0).text == ""  # half an emoji: its bytes tell the story


# -- alignment with the text ----------------------------------------------------------------------
def _entry(i: int, piece: bytes) -> TokenLogprob:
    return TokenLogprob(i, piece, -float(i))


def test_a_split_character_goes_out_with_its_last_byte():
    s = AlignedTextStream()
    emoji = "🙂".encode()
    assert s.push_token(b"Hi ", _entry(1, b"Hi ")) == ("Hi ", False, (_entry(1, b"Hi "),))
    text, _, got = s.push_token(emoji[:2], _entry(2, emoji[:2]))
    assert (text, got) == ("", ())  # nothing to show yet: the entry waits for its character
    text, _, got = s.push_token(emoji[2:], _entry(3, emoji[2:]))
    assert text == "🙂" and [e.token for e in got] == [2, 3] and [e.offset for e in got] == [3, 3]
    assert s.flush_tokens() == ("", ())


def test_a_stop_string_drops_the_entries_inside_it():
    s = AlignedTextStream(["END"])
    out, entries = [], []
    for i, piece in enumerate([b"Paris", b" is", b" E", b"N", b"D", b" more"], start=1):
        text, stopped, got = s.push_token(piece, _entry(i, piece))
        out.append(text)
        entries.extend(got)
        if stopped:
            break
    assert "".join(out) == "Paris is "
    assert [e.token for e in entries] == [1, 2, 3]  # " E" starts before the cut; "N" and "D" are cut away
    assert [e.offset for e in entries] == [0, 5, 8]


def test_held_back_text_keeps_its_entries_until_it_is_sent():
    s = AlignedTextStream(["\n\n"])
    assert s.push_token(b"a\n", _entry(1, b"a\n"))[2] == ()  # "\n" could start the stop string
    text, entries = s.flush_tokens()
    assert text == "\n" and [e.token for e in entries] == [1]


# -- the engine on the bundled SmolLM2 -------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(smollm2_path):
    from edge.engine import open_engine

    # flash attention as llama-cpp-python's oracle below runs it: the two forward passes differ by up to 0.07
    eng = open_engine(smollm2_path, name="logprobs", n_ctx=512, n_parallel=2, n_threads=1, flash_attn=1)
    yield eng
    eng.close()


def _run(engine, params: SamplingParams, *, stream: bool = True, prompt: str = PROMPT):
    async def go():
        deltas, fin = [], None
        async for ev in engine.generate(engine.tokenize(prompt), params, stream=stream):
            if isinstance(ev, Delta):
                deltas.append(ev)
            else:
                fin = ev
        return deltas, fin

    return asyncio.run(go())


def _entries(deltas) -> list[TokenLogprob]:
    return [e for d in deltas for e in d.logprobs]


def test_greedy_without_logprobs_never_reaches_the_logprob_code(engine, monkeypatch):
    plain, _ = _run(engine, SamplingParams(temperature=0, max_tokens=12))

    def boom(*_a, **_k):
        raise AssertionError("the logprob path ran for a request that did not ask")

    monkeypatch.setattr(lp_mod, "entry", boom)
    monkeypatch.setattr(type(engine._batcher), "logits_row", boom)
    again, fin = _run(engine, SamplingParams(temperature=0, max_tokens=12))
    assert isinstance(fin, Finish) and fin.reason == "length"
    assert "".join(d.text for d in again) == "".join(d.text for d in plain)
    assert all(d.logprobs == () for d in again)


def test_top5_are_distinct_sorted_and_greedy_picks_the_first(engine):
    deltas, fin = _run(engine, SamplingParams(temperature=0, max_tokens=16, logprobs=True, top_logprobs=5))
    entries = _entries(deltas)
    assert len(entries) == fin.completion_tokens == 16
    for e in entries:
        assert len(e.top) == 5 and len({t.token for t in e.top}) == 5
        values = [t.logprob for t in e.top]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert e.top[0].token == e.token and e.top[0].logprob == e.logprob  # greedy: the chosen is the best
    text = "".join(d.text for d in deltas)
    assert b"".join(e.piece for e in entries).decode() == text  # entries cover exactly the text
    assert [e.offset for e in entries] == [len(b"".join(x.piece for x in entries[:i]).decode()) for i in range(16)]


def test_streamed_equals_held(engine):
    params = SamplingParams(temperature=0, max_tokens=10, logprobs=True, top_logprobs=3)
    streamed = _entries(_run(engine, params)[0])
    held = _entries(_run(engine, params, stream=False)[0])
    assert streamed == held


def test_values_do_not_depend_on_the_sampling_settings(engine):
    """Taken before temperature and top-k: the first position sees the same raw logits whatever the sampler does."""
    greedy = _entries(_run(engine, SamplingParams(temperature=0, max_tokens=1, logprobs=True, top_logprobs=5))[0])
    hot = SamplingParams(
        temperature=1.7, top_k=3, repeat_penalty=1.5, presence_penalty=1.0, seed=7, max_tokens=1, logprobs=True
    )
    for seed in range(3):
        [e] = _entries(_run(engine, SamplingParams(**{**hot.__dict__, "seed": seed, "top_logprobs": 5}))[0])
        assert e.top == greedy[0].top
        assert e.logprob == next(t.logprob for t in greedy[0].top if t.token == e.token)  # top_k 3: among them


def test_top_logprobs_zero_gives_the_chosen_token_only(engine):
    deltas, _ = _run(engine, SamplingParams(temperature=0, max_tokens=4, logprobs=True))
    assert [len(e.top) for e in _entries(deltas)] == [0, 0, 0, 0]


def test_a_stop_string_keeps_text_and_entries_aligned(engine):
    deltas, fin = _run(engine, SamplingParams(temperature=0, max_tokens=16, stop=("."), logprobs=True))
    text = "".join(d.text for d in deltas)
    assert fin.reason == "stop" and "." not in text
    assert b"".join(e.piece for e in _entries(deltas)).decode() == text


def test_chosen_logprobs_equal_llama_cpp_own(engine, smollm2_path):
    """llama-cpp-python's high-level Llama with logits_all computes logprobs from llama.cpp's raw logits
    (as llama-server does by default): same file, same prompt, greedy."""
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(smollm2_path), n_ctx=512, n_threads=1, logits_all=True, flash_attn=True, verbose=False)
    try:
        ref = llm.create_completion(PROMPT, max_tokens=8, temperature=0, logprobs=5)["choices"][0]["logprobs"]
    finally:
        llm.close()
    entries = _entries(_run(engine, SamplingParams(temperature=0, max_tokens=8, logprobs=True, top_logprobs=5))[0])
    assert [e.text for e in entries] == ref["tokens"]
    assert [e.logprob for e in entries] == pytest.approx([float(x) for x in ref["token_logprobs"]], abs=1e-3)
    for e, top in zip(entries, ref["top_logprobs"]):
        # llama-cpp-python renders control tokens as "": we name them ("<|im_end|>")
        ours = {t.text if t.piece == engine._batcher.piece(t.token) else "": t.logprob for t in e.top}
        assert set(ours) == set(top)
        assert [ours[k] for k in top] == pytest.approx([float(v) for v in top.values()], abs=1e-3)
