"""LoRA adapters in the scheduler: a batch runs under one adapter, prefixes are reused within one only."""

from __future__ import annotations

import asyncio

from edge.engine.base import Adapter
from edge.engine.scheduler import Scheduler
from tests.support.fake_backend import StatefulFakeBatcher, collect_text

A, B = Adapter("/a.gguf"), Adapter("/b.gguf", 0.5)


class AdapterFake(StatefulFakeBatcher):
    """Records the adapter applied at every decode, and each sequence's adapter per token."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.applied: Adapter | None = None
        self.by_seq: dict[int, set] = {}
        self.sets = 0

    def set_adapter(self, adapter):
        self.sets += adapter != self.applied
        self.applied = adapter

    def decode(self, entries):
        for seq, *_ in entries:
            self.by_seq.setdefault(seq, set()).add(self.applied)
        return super().decode(entries)


def run(sched, prompt, adapter, n=6):
    return collect_text(sched, prompt, max_tokens=n, adapter=adapter)


def test_each_decode_holds_one_adapter_and_every_request_finishes():
    fb = AdapterFake(n_slots=3, n_batch=64, delay=0.002)
    sched = Scheduler(fb, queue_size=8)
    seen: list[tuple] = []
    real_decode = fb.decode

    def decode(entries):
        seen.append((fb.applied, [seq for seq, *_ in entries]))
        return real_decode(entries)

    fb.decode = decode  # type: ignore[method-assign]
    slot_adapter: dict[int, object] = {}

    async def main():
        return await asyncio.gather(run(sched, [11], None), run(sched, [21], A), run(sched, [31], B))

    try:
        results = asyncio.run(main())
    finally:
        sched.close()
    assert [t for t, _ in results] == ["".join(f"<{s + k}>" for k in range(1, 7)) for s in (11, 21, 31)]
    assert all(fin.completion_tokens == 6 for _, fin in results)
    for applied, seqs in seen:  # a sequence always decodes under the same adapter
        for seq in seqs:
            assert slot_adapter.setdefault(seq, applied) == applied
    assert len(set(slot_adapter.values())) == 3 and fb.sets >= 3


def test_prefix_is_reused_only_under_the_same_adapter():
    fb = AdapterFake(n_slots=1, n_batch=64)
    sched = Scheduler(fb, queue_size=4)
    system = list(range(100, 150))
    try:
        _, first = asyncio.run(run(sched, system + [1], A, 2))
        _, other = asyncio.run(run(sched, system + [2], None, 2))  # base after A: nothing reused
        _, base_again = asyncio.run(run(sched, system + [3], None, 2))
        _, a_again = asyncio.run(run(sched, system + [4], A, 2))  # the slot now holds base KV
    finally:
        sched.close()
    assert (first.cached_tokens, other.cached_tokens, base_again.cached_tokens, a_again.cached_tokens) == (0, 0, 50, 0)
