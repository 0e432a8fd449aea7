"""The scheduler against a scripted fake backend: slots, queue, prefix reuse, text assembly.

The fake "model" keeps a per-sequence KV list and asserts that every decoded token lands at the
next free position of its sequence, so any bookkeeping error in prefix reuse or chunking fails
loudly. Its next token is (last token + 1) % VOCAB; token 0 is end-of-generation.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from edge.engine.base import Delta, SamplingParams
from edge.engine.detok import StopMatcher, TextStream
from edge.engine.scheduler import GenerationStream, Scheduler
from edge.errors import BadRequestError, ContextOverflowError, QueueFullError
from tests.support.fake_backend import FakeBatcher


@pytest.fixture
def make():
    made = []

    def factory(queue_size=4, **kw):
        fb = FakeBatcher(**kw)
        sched = Scheduler(fb, queue_size=queue_size)
        made.append(sched)
        return fb, sched

    yield factory
    for s in made:
        s.close()


async def collect(sched, prompt, **params):
    stream = GenerationStream(sched, sched.submit(prompt, SamplingParams(temperature=0, **params)))
    deltas = []
    async for ev in stream:
        if isinstance(ev, Delta):
            deltas.append(ev)
        else:
            return deltas, ev
    raise AssertionError("no Finish event")


def text_of(deltas):
    return "".join(d.text for d in deltas)


def test_generates_until_max_tokens(make):
    fb, sched = make()
    deltas, fin = asyncio.run(collect(sched, [1, 2, 3], max_tokens=5))
    assert text_of(deltas) == "<4><5><6><7><8>"
    assert fin.reason == "length" and fin.completion_tokens == 5 and fin.prompt_tokens == 3
    assert sum(d.n_tokens for d in deltas) == 5
    assert fb.live_samplers == 0


def test_end_of_generation_token_stops(make):
    _, sched = make()
    deltas, fin = asyncio.run(collect(sched, [5, 997], max_tokens=50))
    assert text_of(deltas) == "<998><999>"
    assert fin.reason == "stop" and fin.completion_tokens == 2


def test_max_tokens_zero_generates_nothing(make):
    _, sched = make()
    deltas, fin = asyncio.run(collect(sched, [1, 2], max_tokens=0))
    assert deltas == [] and fin.reason == "length" and fin.completion_tokens == 0


def test_utf8_never_split(make):
    _, sched = make()
    deltas, fin = asyncio.run(collect(sched, [98, 99], max_tokens=4))
    assert [d.text for d in deltas] == ["😀", "!", "<103>"]
    assert [d.n_tokens for d in deltas] == [2, 1, 1]
    deltas, _ = asyncio.run(collect(sched, [199], max_tokens=3))
    assert [d.text for d in deltas] == ["é", "<202>"]


def test_stop_string_cuts_and_is_not_returned(make):
    _, sched = make()
    deltas, fin = asyncio.run(collect(sched, [1], max_tokens=20, stop=("<5>",)))
    assert text_of(deltas) == "<2><3><4>" and fin.reason == "stop"
    # a stop string that starts to match and then does not: the held-back text comes out intact
    deltas, fin = asyncio.run(collect(sched, [1], max_tokens=4, stop=("<5>X",)))
    assert text_of(deltas) == "<2><3><4><5>" and fin.reason == "length"


def test_stop_string_spanning_tokens(make):
    _, sched = make()
    deltas, fin = asyncio.run(collect(sched, [1], max_tokens=20, stop=("3><4",)))
    assert text_of(deltas) == "<2><" and fin.reason == "stop"


def test_prefix_reuse_counts(make):
    fb, sched = make(n_slots=2)
    system = list(range(10, 60))  # 50 tokens
    _, fin = asyncio.run(collect(sched, system + [900, 901], max_tokens=3))
    assert fin.cached_tokens == 0
    _, fin = asyncio.run(collect(sched, system + [700, 701, 702], max_tokens=3))
    assert fin.cached_tokens == 50
    # the identical prompt again: all but the last token come from the cache (its logits are needed)
    _, fin = asyncio.run(collect(sched, system + [700, 701, 702], max_tokens=3))
    assert fin.cached_tokens == 52
    assert sched.stats()["cached_tokens"] == 102


def test_request_goes_to_slot_with_longest_prefix(make):
    fb, sched = make(n_slots=3)

    async def main():
        a, b = list(range(300, 340)), list(range(400, 440))
        await asyncio.gather(collect(sched, a, max_tokens=2), collect(sched, b, max_tokens=2))
        _, fin_b = await collect(sched, b + [5], max_tokens=2)
        _, fin_a = await collect(sched, a + [5], max_tokens=2)
        return fin_a, fin_b

    fin_a, fin_b = asyncio.run(main())
    assert fin_a.cached_tokens == 40 and fin_b.cached_tokens == 40


def test_concurrent_requests_are_batched_without_cross_talk(make):
    fb, sched = make(n_slots=4, n_batch=64, delay=0.002)

    async def main():
        prompts = [[10 * i + 1] for i in range(1, 5)]
        return await asyncio.gather(*(collect(sched, p, max_tokens=6) for p in prompts))

    results = asyncio.run(main())
    for i, (deltas, _fin) in enumerate(results, start=1):
        start = 10 * i + 2
        assert text_of(deltas) == "".join(f"<{t}>" for t in range(start, start + 6))
    assert max(len(b) for b in fb.batches) == 4, "the four slots should share decode calls"


def test_long_prompt_is_chunked_and_does_not_block_decoding(make):
    fb, sched = make(n_slots=2, n_batch=8, delay=0.002)

    async def main():
        first = asyncio.create_task(collect(sched, [1], max_tokens=30))
        await asyncio.sleep(0.02)
        second = await collect(sched, list(range(500, 560)), max_tokens=2)
        return await first, second

    (d1, f1), (d2, f2) = asyncio.run(main())
    assert f1.completion_tokens == 30 and f2.completion_tokens == 2
    mixed = [b for b in fb.batches if len(b) == 2]
    assert mixed, "prompt chunks should share batches with the generating slot"
    assert all(sum(n for _, n in b) <= 8 for b in fb.batches)


def test_queue_full_raises_at_once(make):
    fb, sched = make(n_slots=1, queue_size=1, delay=0.01)

    async def main():
        s1 = GenerationStream(sched, sched.submit([1], SamplingParams(max_tokens=50)))
        s2 = GenerationStream(sched, sched.submit([2], SamplingParams(max_tokens=50)))
        with pytest.raises(QueueFullError) as err:
            sched.submit([3], SamplingParams(max_tokens=5))
        assert err.value.http_status == 503 and err.value.headers()["Retry-After"]
        assert sched.stats()["queued"] + sched.stats()["busy"] == 2
        await s1.aclose()
        await s2.aclose()

    asyncio.run(main())


def test_cancel_frees_slot(make):
    fb, sched = make(n_slots=1, queue_size=0, delay=0.005)

    async def main():
        stream = GenerationStream(sched, sched.submit([1], SamplingParams(max_tokens=None)))
        first = await stream.__anext__()
        assert isinstance(first, Delta)
        await stream.aclose()
        for _ in range(200):  # freed at the next decode step
            if sched.stats()["busy"] == 0:
                break
            await asyncio.sleep(0.005)
        assert sched.stats()["busy"] == 0
        return await collect(sched, [7], max_tokens=2)

    deltas, fin = asyncio.run(main())
    assert text_of(deltas) == "<8><9>"
    assert fb.live_samplers == 0


def test_cancelled_task_frees_slot(make):
    fb, sched = make(n_slots=1, queue_size=0, delay=0.005)

    async def main():
        task = asyncio.create_task(collect(sched, [1], max_tokens=None))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(200):
            if sched.stats()["busy"] == 0:
                break
            await asyncio.sleep(0.005)
        return sched.stats()["busy"]

    assert asyncio.run(main()) == 0


def test_context_limits(make):
    fb, sched = make(n_ctx=16)
    with pytest.raises(ContextOverflowError) as err:
        asyncio.run(collect(sched, list(range(1, 17)), max_tokens=1))
    assert "16" in err.value.message
    deltas, fin = asyncio.run(collect(sched, list(range(100, 110)), max_tokens=None))
    # positions 0..15 are filled; the last sampled token is returned but never needs a position
    assert fin.reason == "length" and fin.completion_tokens == 16 - 10 + 1


def test_bad_sampler_params_raise_at_submit(make):
    fb, sched = make()

    async def main():
        with pytest.raises(BadRequestError):
            sched.submit([1], SamplingParams(grammar="bad"))
        with pytest.raises(BadRequestError):
            sched.submit([], SamplingParams())

    asyncio.run(main())
    assert sched.stats()["queued"] == 0 and fb.live_samplers == 0


def test_close_stops_loop_and_fails_waiters(make):
    fb, sched = make(n_slots=1, queue_size=2, delay=0.01)

    async def main():
        stream = GenerationStream(sched, sched.submit([1], SamplingParams(max_tokens=None)))
        await stream.__anext__()
        await asyncio.to_thread(sched.close)
        with pytest.raises(Exception) as err:
            async for _ in stream:
                pass
        return err.value

    err = asyncio.run(main())
    assert getattr(err, "http_status", None) == 503
    assert not sched._thread.is_alive()
    assert time.monotonic() - sched.heartbeat < 5


def test_heartbeat_advances_when_idle(make):
    _, sched = make()
    before = sched.heartbeat
    time.sleep(1.2)
    assert sched.heartbeat > before


# ---- text assembly on its own --------------------------------------------------------------
def test_stop_matcher_holds_back_only_possible_prefixes():
    m = StopMatcher(("END",))
    assert m.push("abcE") == ("abc", False)
    assert m.push("N") == ("", False)
    assert m.push("x") == ("ENx", False)
    assert m.push("yEND tail") == ("y", True)


def test_text_stream_flushes_incomplete_bytes_as_replacement():
    ts = TextStream()
    assert ts.push(b"a\xe2\x82") == ("a", False)
    assert ts.flush() == "\ufffd"


def test_dropped_stream_frees_its_slot(make):
    """A stream that is garbage-collected without aclose() (a handler that forgot) still frees the slot."""
    import gc

    fb, sched = make(n_slots=1, queue_size=0, delay=0.005, n_ctx=10**6)  # would run ~5 s on its own

    async def main():
        stream = GenerationStream(sched, sched.submit([1], SamplingParams(max_tokens=None)))
        await stream.__anext__()
        del stream
        gc.collect()
        for _ in range(200):
            if sched.stats()["busy"] == 0:
                break
            await asyncio.sleep(0.005)
        return sched.stats()["busy"]

    assert asyncio.run(main()) == 0
    assert fb.live_samplers == 0


def test_a_failing_backend_fails_the_request_not_the_loop(make):
    fb, sched = make(n_slots=1)
    real = fb.sample
    fb.sample = lambda sampler, row: (_ for _ in ()).throw(RuntimeError("boom"))
    with pytest.raises(Exception, match="boom"):
        asyncio.run(collect(sched, [1], max_tokens=3))
    fb.sample = real
    deltas, fin = asyncio.run(collect(sched, [1], max_tokens=2))
    assert text_of(deltas) == "<2><3>" and sched._thread.is_alive()
