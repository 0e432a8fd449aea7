"""A scripted fake backend for scheduler tests: a per-sequence KV list that checks every position.

Every decoded token must land at the next free position of its sequence, so any bookkeeping error in
prefix reuse, chunking or a restored state fails loudly. Its next token is (last token + 1) % VOCAB;
token 0 is end-of-generation.
"""

from __future__ import annotations

import json
import threading
import time

from edge.engine.base import Delta, SamplingParams
from edge.engine.scheduler import GenerationStream
from edge.errors import BadRequestError

VOCAB = 1000
EOG = 0
PIECES = {100: b"\xf0\x9f", 101: b"\x98\x80", 102: b"!", 200: "é".encode()[:1], 201: "é".encode()[1:]}


class FakeBatcher:
    def __init__(self, n_slots=2, n_ctx=256, n_batch=16, delay=0.0):
        self.n_slots, self.n_ctx, self.n_batch, self.delay = n_slots, n_ctx, n_batch, delay
        self.kv = {i: [] for i in range(n_slots)}
        self.batches: list[list[tuple[int, int]]] = []  # (seq, n_tokens) per decode call
        self.live_samplers = 0
        self._rows: dict[int, int] = {}
        self._lock = threading.Lock()

    def make_sampler(self, params):
        if params.grammar == "bad":
            raise BadRequestError("bad grammar")
        with self._lock:
            self.live_samplers += 1
        return object()

    def free_sampler(self, sampler):
        with self._lock:
            self.live_samplers -= 1

    def keep_prefix(self, seq, n_keep):
        del self.kv[seq][n_keep:]
        return n_keep

    def decode(self, entries):
        assert sum(len(t) for _, t, _, _ in entries) <= self.n_batch
        assert len({seq for seq, *_ in entries}) == len(entries), "one entry per sequence"
        self.batches.append([(seq, len(t)) for seq, t, _, _ in entries])
        rows, n = [], 0
        self._rows = {}
        for seq, tokens, pos0, n_out in entries:
            assert pos0 == len(self.kv[seq]), f"seq {seq}: token at {pos0}, cache holds {len(self.kv[seq])}"
            assert pos0 + len(tokens) <= self.n_ctx
            assert n_out <= 1 + getattr(self, "draft_max", 0)
            for j, tok in enumerate(tokens):
                self.kv[seq].append(tok)
                if j >= len(tokens) - n_out:
                    rows.append(n)
                    self._rows[n] = (seq, pos0 + j)
                n += 1
        if self.delay:
            time.sleep(self.delay)
        return rows

    def sample(self, sampler, row):
        seq, pos = self._rows[row]
        return (self.kv[seq][pos] + 1) % VOCAB

    def piece(self, token):
        return PIECES.get(token, f"<{token}>".encode())

    def is_eog(self, token):
        return token == EOG


class SpecFakeBatcher(FakeBatcher):
    """A FakeBatcher that verifies drafts: logits rows for up to 1 + draft_max tokens of a slot, and
    `discard` drops the positions of rejected ones."""

    def __init__(self, draft_max=4, **kw):
        super().__init__(**kw)
        self.draft_max = draft_max
        self.discarded = 0

    def discard(self, seq, pos):
        assert pos <= len(self.kv[seq])
        self.discarded += len(self.kv[seq]) - pos
        del self.kv[seq][pos:]


class StatefulFakeBatcher(FakeBatcher):
    """A FakeBatcher whose sequences' "KV state" (their token lists) can be saved and restored."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.loads = 0

    def save_state(self, seq):
        return bytearray(json.dumps(self.kv[seq]).encode())

    def load_state(self, seq, state):
        self.loads += 1
        self.kv[seq] = json.loads(bytes(state))
        return True


async def collect_text(sched, prompt, **params):
    """Run one greedy request through a scheduler: (its text, its Finish event)."""
    stream = GenerationStream(sched, sched.submit(prompt, SamplingParams(temperature=0, **params)))
    text = []
    async for ev in stream:
        if isinstance(ev, Delta):
            text.append(ev.text)
        else:
            return "".join(text), ev
    raise AssertionError("no Finish event")
