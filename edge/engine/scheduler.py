"""Slots, a bounded FIFO, prefix reuse and the one decode thread (backend-agnostic).

A backend only provides `Batcher` primitives (decode a batch of (sequence, tokens) entries, sample
from an output row, trim a sequence's KV cache, token bytes, end-of-generation test). This module
owns everything else:

- N slots; slot i owns sequence id i in the backend's KV cache and remembers which tokens that
  cache holds (`_Slot.cached`), so a new request goes to the free slot sharing the longest prefix
  with its prompt and only the rest of the prompt is evaluated.
- A FIFO of at most `queue_size` waiting requests; beyond that `QueueFullError` at once.
- One thread runs `_loop`: every step decodes ONE batch holding the next token of every generating
  slot plus prompt chunks of starting slots, within `n_batch` tokens, so a long prompt never blocks
  the others for more than one chunk.
- An optional `PromptCache` beyond the slots (edge.engine.prompt_cache): a slot's KV state is copied
  out before a request overwrites it, and after a request whose prompt the cache did not hold; a
  request whose prompt shares more with a kept state than with its slot gets that state copied in.
  It holds base-model states only: a request under a LoRA adapter reuses only its slot's prefix.
- LoRA adapters (`SamplingParams.adapter`): a batch holds the slots of one adapter (llama.cpp applies
  adapters per context), adapters in use take turns step by step, and a slot's cached prefix serves
  only a request under the same adapter.
- Text assembly (`edge.engine.detok.TextStream`), stop strings, max tokens, context end, cancellation.
- Log probabilities (`edge.engine.logprobs`) for the requests that ask, read from the row just sampled;
  a request without them takes none of that path.
- Optional prompt-lookup speculation (edge.engine.speculative) on a backend that can verify drafts
  (`draft_max` > 0, `discard`): a generating slot feeds its last token plus a draft copied from its own
  context, the sampler runs on each position in turn, and the KV of rejected positions is dropped. A
  draft is sent only when it pays: every decode call of sampled tokens only is timed into a
  `DecodeCost`, and each slot's drafter weighs its acceptance against that cost.
- Events reach each request's asyncio queue through `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from edge.engine.base import Adapter, Delta, Engine, Event, Finish, FinishReason, SamplingParams, TokenLogprob
from edge.engine.detok import AlignedTextStream, TextStream
from edge.engine.prompt_cache import PromptCache, common_prefix
from edge.engine.speculative import DecodeCost, Drafter, SpecConfig
from edge.errors import BadRequestError, ContextOverflowError, EdgeError, QueueFullError, UnavailableError

IDLE_WAKE_S = 1.0  # an idle loop still beats this often (the watchdog reads `heartbeat`)


class Batcher(Protocol):
    """What the scheduler needs from a backend. Only `make_sampler`/`free_sampler` and `piece`/`is_eog`
    may be called from another thread than the decode thread."""

    n_slots: int
    n_ctx: int  # tokens per slot
    n_batch: int  # most tokens in one decode call

    def make_sampler(self, params: SamplingParams) -> Any: ...
    def free_sampler(self, sampler: Any) -> None: ...
    def keep_prefix(self, seq: int, n_keep: int) -> int: ...  # drop KV from n_keep on; return what was kept
    # (seq, tokens, first position, n_out): logits rows of the last n_out tokens of each entry (0 or 1,
    # or 1 + its draft on a SpecBatcher), returned in entry order
    def decode(self, entries: list[tuple[int, list[int], int, int]]) -> list[int]: ...
    def sample(self, sampler: Any, row: int) -> int: ...
    def piece(self, token: int) -> bytes: ...
    def is_eog(self, token: int) -> bool: ...
    # For requests with logprobs only (edge.engine.logprobs): the (vocab,) float32 raw logits of a
    # sampled row, valid until the next decode; a token's bytes with control tokens by their name.
    def logits_row(self, row: int) -> Any: ...
    def display_piece(self, token: int) -> bytes: ...


class StatefulBatcher(Batcher, Protocol):
    """A backend whose sequences' KV states can be copied out and back (for a PromptCache)."""

    def save_state(self, seq: int) -> bytearray: ...
    def load_state(self, seq: int, state: bytes | bytearray) -> bool: ...


class SpecBatcher(Batcher, Protocol):
    """A backend that can verify drafts: up to `draft_max` extra logits rows per slot in one decode, and
    the KV of rejected positions dropped."""

    draft_max: int

    def discard(self, seq: int, pos: int) -> None: ...  # drop sequence seq's KV from pos on


RESTORE_MIN_GAIN = 32  # restoring must spare at least this many prompt tokens over the slot's own reuse


class Request:
    """One generation: its prompt, sampler and the asyncio queue its events go to."""

    def __init__(
        self,
        prompt: list[int],
        params: SamplingParams,
        sampler: Any,
        loop: asyncio.AbstractEventLoop,
        hold: bool = False,
    ):
        self.prompt = prompt
        self.params = params
        self.sampler = sampler
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = False  # set from the event loop, read by the decode thread
        self.t_submit = time.perf_counter_ns()
        # A client that does not stream gets its text in one Delta just before the Finish: the event
        # loop is not woken per token, and on a small CPU that wake-up competes with llama.cpp's threads.
        self.hold = hold
        self._held: list[Delta] = []  # decode thread only

    def emit(self, item: Event | BaseException) -> None:
        if self.hold and isinstance(item, Delta):
            self._held.append(item)
            return
        if self._held:
            held, self._held = self._held, []
            logprobs = tuple(e for d in held for e in d.logprobs) if self.params.logprobs else ()
            self._post(Delta("".join(d.text for d in held), sum(d.n_tokens for d in held), logprobs))
        self._post(item)

    def _post(self, item: Event | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the consumer's event loop is gone: nobody listens any more
            self.cancelled = True


@dataclass
class _Slot:
    seq: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV sits in sequence `seq`
    last_used: int = 0
    req: Request | None = None
    todo: list[int] = field(default_factory=list)  # tokens to evaluate next (prompt rest, or the last sampled)
    text: TextStream | None = None
    n_cached: int = 0  # prompt tokens reused from the cache
    n_generated: int = 0
    n_unsent: int = 0  # tokens whose text is still held back
    drafter: Drafter | None = None  # this request's n-gram index, while it speculates
    t_start: int = 0
    t_first: int = 0
    adapter: Adapter | None = None  # the LoRA `cached` was computed under: a prefix is shared only within it


class Scheduler:
    def __init__(
        self,
        batcher: Batcher,
        *,
        queue_size: int = 16,
        name: str = "edge-decode",
        prompt_cache: PromptCache | None = None,
        spec: SpecConfig | None = None,
        cost: DecodeCost | None = None,
    ):
        """`spec`: draft-free speculation, used when the backend can verify drafts (`SpecBatcher`);
        `cost`: what its decode calls cost by size (default: learned from this scheduler's own calls)."""
        if queue_size < 0:
            raise BadRequestError(f"queue_size must be >= 0, got {queue_size}")
        self.b = batcher
        stateful = hasattr(batcher, "save_state") and hasattr(batcher, "load_state")
        self.cache = prompt_cache if prompt_cache is not None and prompt_cache.enabled and stateful else None
        can_verify = hasattr(batcher, "discard") and getattr(batcher, "draft_max", 0) > 0
        draft_max = min(getattr(batcher, "draft_max", 0), spec.draft_max) if spec is not None and can_verify else 0
        self.spec = replace(spec, draft_max=draft_max) if spec is not None and draft_max > 0 else None
        self.cost = cost if cost is not None else DecodeCost(n_max=batcher.n_slots * (1 + draft_max))
        self.queue_size = queue_size
        self.slots = [_Slot(seq=i) for i in range(batcher.n_slots)]
        self.heartbeat = time.monotonic()  # last loop iteration (monotonic seconds)
        self.counters = {"requests": 0, "prompt_tokens": 0, "cached_tokens": 0, "generated_tokens": 0}
        if self.spec is not None:
            self.counters |= {"spec_drafted": 0, "spec_accepted": 0, "spec_turned_off": 0}
        self._waiting: deque[Request] = deque()
        self._admitted = 0  # waiting + in slots
        self._tick = 0
        self._turn = 0  # rotates the adapter whose slots the next batch holds (_one_adapter)
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ---- event-loop side ------------------------------------------------------------------
    def submit(self, prompt: list[int], params: SamplingParams, *, hold: bool = False) -> Request:
        """Queue a generation; raises at once when it cannot be served. `hold`: the text comes in one
        Delta right before the Finish (a non-streaming client)."""
        if not prompt:
            raise BadRequestError("the prompt is empty: send at least one token")
        if len(prompt) >= self.b.n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(prompt)} tokens but the context holds {self.b.n_ctx} per slot; "
                "shorten the prompt or start the server with a larger --ctx",
                param="messages",
            )
        if params.max_tokens is not None and params.max_tokens < 0:
            raise BadRequestError(f"max_tokens must be >= 0, got {params.max_tokens}", param="max_tokens")
        loop = asyncio.get_running_loop()
        sampler = self.b.make_sampler(params)
        with self._cond:
            if self._closing or not self._thread.is_alive():
                self.b.free_sampler(sampler)
                raise UnavailableError("the engine is shutting down; retry on the next server")
            if self._admitted >= len(self.slots) + self.queue_size:
                self.b.free_sampler(sampler)
                raise QueueFullError(
                    f"all {len(self.slots)} slots are busy and {len(self._waiting)} requests are waiting; retry shortly",
                    retry_after=1,
                )
            req = Request(prompt, params, sampler, loop, hold=hold)
            self._admitted += 1
            self._waiting.append(req)
            self._cond.notify()
        return req

    def cancel(self, req: Request) -> None:
        """Client gone: drop it from the queue now, or free its slot at the next step."""
        req.cancelled = True
        with self._cond:
            if req in self._waiting:
                self._waiting.remove(req)
                self._admitted -= 1
                self.b.free_sampler(req.sampler)

    def stats(self) -> dict:
        with self._cond:
            busy = sum(1 for s in self.slots if s.req is not None)
            return {
                "slots": len(self.slots),
                "busy": busy,
                "queued": len(self._waiting),
                "heartbeat": self.heartbeat,
                **self.counters,
                **(self.cache.stats() if self.cache is not None else {}),
            }

    def close(self, timeout: float = 30.0) -> bool:
        """Stop the loop; True when the thread ended (False: it is stuck in a backend call)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self.cache is not None:
            self.cache.close()
        return not self._thread.is_alive()

    # ---- decode thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        warm_up = getattr(self.b, "warm_up", None)  # optional: a first decode, on this thread (LlamaCppBatcher)
        if warm_up is not None:
            try:
                warm_up()
            except Exception:  # a failed warm-up leaves the first request slower, nothing else
                logging.getLogger("edge.engine.scheduler").exception("warm-up failed")
        while True:
            self.heartbeat = time.monotonic()
            with self._cond:
                if self._closing:
                    break
                self._admit_locked()
                if not any(s.req is not None for s in self.slots):
                    self._cond.wait(IDLE_WAKE_S)
                    continue
            try:
                self._step()
            except Exception as exc:  # a bug must fail the requests in flight, never kill the loop
                logging.getLogger("edge.engine.scheduler").exception("decode step failed")
                self._fail([s for s in self.slots if s.req is not None], exc)
        self._shutdown()

    def _step(self) -> None:
        for slot in self.slots:
            if slot.req is not None and slot.req.cancelled:
                self._finish(slot, "cancelled")
        plan = self._plan()
        if not plan:
            return
        t0 = time.perf_counter()
        try:
            rows = self.b.decode([(s.seq, chunk, len(s.cached), out) for s, chunk, out in plan])
        except Exception as exc:  # a failed decode fails the requests in it, not the server
            self._fail([s for s, _, _ in plan], exc)
            return
        if self.spec is not None and all(out == len(chunk) for _, chunk, out in plan):  # no prompt chunk in it
            self.cost.record(sum(len(chunk) for _, chunk, _ in plan), time.perf_counter() - t0)
        at = 0
        for slot, chunk, n_out in plan:
            if n_out > 1:
                self._verify(slot, chunk, rows[at : at + n_out])
                at += n_out
                continue
            slot.cached.extend(chunk)
            del slot.todo[: len(chunk)]
            if n_out:
                row = rows[at]
                at += 1
                req = slot.req
                assert req is not None  # planned slots hold a request
                self._emit(slot, self.b.sample(req.sampler, row), row)

    def _emit(self, slot: _Slot, token: int, row: int) -> None:
        assert slot.req is not None
        if slot.req.params.logprobs:
            self._on_token_logprob(slot, token, row)
        else:
            self._on_token(slot, token)

    def _plan(self) -> list[tuple[_Slot, list[int], int]]:
        """This step's batch: one token per generating slot (plus its draft), then prompt chunks within
        n_batch. Entries are (slot, tokens, how many of the last tokens need logits)."""
        budget = self.b.n_batch
        plan = []
        active = self._one_adapter([s for s in self.slots if s.req is not None])
        generating = [s for s in active if s.t_first]
        drafting = self.spec is not None and len(active) <= self.spec.max_busy
        budget -= len(generating)
        n_step, gain = len(generating), float(len(generating))  # tokens decoded, tokens expected back
        for slot in generating:  # exactly one token to feed back, and maybe a draft after it
            draft: list[int] = []
            if slot.drafter is not None:
                limit = self._draft_limit(slot, budget)
                if drafting:
                    draft, expected = slot.drafter.draft(limit, self.cost, n_base=n_step, gain_base=gain)
                    n_step, gain = n_step + len(draft), gain + expected
                else:
                    slot.drafter.watch(limit)
            budget -= len(draft)
            plan.append((slot, slot.todo[:1] + draft, 1 + len(draft)))
        for slot in sorted((s for s in active if not s.t_first), key=lambda s: s.req.t_submit if s.req else 0):
            if budget <= 0:
                break
            chunk = slot.todo[:budget]
            plan.append((slot, chunk, int(len(chunk) == len(slot.todo))))
            budget -= len(chunk)
        return plan

    # ---- speculation (edge.engine.speculative) ---------------------------------------------------
    def _draft_limit(self, slot: _Slot, budget: int) -> int:
        """The longest draft for a generating slot such that every token it could add stays within the
        request's max_tokens and the slot's context."""
        assert slot.req is not None and self.spec is not None
        limit = min(budget, self.spec.draft_max, self.b.n_ctx - 1 - len(slot.cached))
        if slot.req.params.max_tokens is not None:
            limit = min(limit, slot.req.params.max_tokens - slot.n_generated - 1)
        return limit

    def _verify(self, slot: _Slot, chunk: list[int], rows: list[int]) -> None:
        """Sample each drafted position in turn while the sampler agrees with the draft; keep the KV of
        the agreed tokens, drop the rest, then hand the sampled tokens on as plain decoding would."""
        req, drafter = slot.req, slot.drafter
        assert req is not None and drafter is not None
        draft = chunk[1:]
        picked = []
        for i, row in enumerate(rows):
            token = self.b.sample(req.sampler, row)
            picked.append((token, row))
            if i == len(draft) or token != draft[i] or self.b.is_eog(token):
                break
        n_accepted = len(picked) - 1
        sb: SpecBatcher = self.b  # type: ignore[assignment]  # checked in __init__
        sb.discard(slot.seq, len(slot.cached) + 1 + n_accepted)
        self.counters["spec_drafted"] += len(draft)
        self.counters["spec_accepted"] += n_accepted
        drafter.record(len(draft), n_accepted)
        slot.cached.append(chunk[0])
        slot.todo = []
        for i, (token, row) in enumerate(picked):
            if i:
                slot.cached.append(draft[i - 1])
            self._emit(slot, token, row)
            if slot.req is not req:  # finished (stop, length, stop string)
                return

    def _one_adapter(self, active: list[_Slot]) -> list[_Slot]:
        """llama.cpp applies LoRA adapters to a whole context, so one batch runs under one adapter: the
        slots of the adapter whose turn it is (turns rotate over the adapters in use); the others wait a step."""
        adapters = list(dict.fromkeys(s.req.params.adapter for s in active if s.req is not None))
        if len(adapters) > 1:
            self._turn += 1
        chosen = adapters[self._turn % len(adapters)] if adapters else None
        if adapters and hasattr(self.b, "set_adapter"):
            self.b.set_adapter(chosen)
        return [s for s in active if s.req is not None and s.req.params.adapter == chosen]

    def _admit_locked(self) -> None:
        while self._waiting:
            free = [s for s in self.slots if s.req is None]
            if not free:
                return
            req = self._waiting.popleft()
            if req.cancelled:
                self.b.free_sampler(req.sampler)
                self._admitted -= 1
                continue
            best = max(free, key=lambda s: (self._reusable(s, req), -s.last_used))
            self._start(best, req)

    @staticmethod
    def _reusable(slot: _Slot, req: Request) -> int:
        """Prompt tokens whose KV the slot holds, computed under the request's adapter."""
        return common_prefix(slot.cached, req.prompt) if slot.adapter == req.params.adapter else 0

    def _start(self, slot: _Slot, req: Request) -> None:
        keep = min(self._reusable(slot, req), len(req.prompt) - 1)
        if self.cache is not None and req.params.adapter is None and slot.adapter is None:  # base-model KV only
            keep = self._from_cache(slot, req.prompt, keep)
        keep = self.b.keep_prefix(slot.seq, keep)
        slot.adapter = req.params.adapter
        self._tick += 1
        slot.req, slot.last_used = req, self._tick
        slot.cached = slot.cached[:keep]
        slot.todo = list(req.prompt[keep:])
        slot.text = AlignedTextStream(req.params.stop) if req.params.logprobs else TextStream(req.params.stop)
        slot.n_cached, slot.n_generated, slot.n_unsent = keep, 0, 0
        slot.drafter = Drafter(self.spec, req.prompt) if self.spec is not None and req.params.speculate else None
        slot.t_start, slot.t_first = time.perf_counter_ns(), 0
        self.counters["requests"] += 1
        self.counters["prompt_tokens"] += len(req.prompt)
        self.counters["cached_tokens"] += keep

    def _from_cache(self, slot: _Slot, prompt: list[int], keep: int) -> int:
        """Keep what the slot holds beyond `keep` (it is about to be dropped), and restore a cached state
        that shares more of `prompt` than the slot does. Returns how many prompt tokens to keep."""
        assert self.cache is not None
        if len(slot.cached) - keep >= self.cache.min_tokens:
            self._save(slot)
        hit = self.cache.lookup(prompt)
        if hit is None:
            return keep
        entry, n = hit
        n = min(n, len(prompt) - 1)
        if n < keep + RESTORE_MIN_GAIN:
            return keep
        state = self.cache.state_of(entry)
        b: StatefulBatcher = self.b  # type: ignore[assignment]  # checked in __init__
        if state is None or not b.load_state(slot.seq, state):
            slot.cached = []
            return 0 if state is not None else keep
        slot.cached = list(entry.tokens)
        self.cache.touch(entry, n)
        return n

    def _save(self, slot: _Slot) -> None:
        """Copy the slot's KV state into the cache unless the cache already holds nearly all of it."""
        assert self.cache is not None
        if len(slot.cached) - self.cache.covered(slot.cached) < self.cache.min_tokens:
            return
        b: StatefulBatcher = self.b  # type: ignore[assignment]
        state = b.save_state(slot.seq)
        if state:
            self.cache.add(slot.cached, state)

    def _on_token_logprob(self, slot: _Slot, token: int, row: int) -> None:
        from edge.engine.logprobs import entry  # numpy: only for requests that ask

        assert slot.req is not None
        self._on_token(slot, token, entry(self.b.logits_row(row), token, slot.req.params.top_logprobs, self.b))

    def _on_token(self, slot: _Slot, token: int, logprob: TokenLogprob | None = None) -> None:
        req = slot.req
        assert req is not None and slot.text is not None  # a generating slot holds both
        if not slot.t_first:
            slot.t_first = time.perf_counter_ns()
        if self.b.is_eog(token) and not req.params.ignore_eos:
            return self._finish(slot, "stop")
        limit = req.params.max_tokens
        if limit is not None and slot.n_generated >= limit:  # max_tokens 0: evaluate the prompt only
            return self._finish(slot, "length")
        slot.n_generated += 1
        slot.n_unsent += 1
        self.counters["generated_tokens"] += 1
        if logprob is None:
            text, stopped = slot.text.push(self.b.piece(token))
            entries: tuple[TokenLogprob, ...] = ()
        else:
            assert isinstance(slot.text, AlignedTextStream)  # _start gives one to every request with logprobs
            text, stopped, entries = slot.text.push_token(self.b.piece(token), logprob)
        if text or entries:
            req.emit(Delta(text, slot.n_unsent, entries))
            slot.n_unsent = 0
        if stopped:
            return self._finish(slot, "stop", flush=False)
        if (limit is not None and slot.n_generated >= limit) or len(slot.cached) >= self.b.n_ctx:
            return self._finish(slot, "length")
        slot.todo = [token]
        if slot.drafter is not None:
            slot.drafter.push(token)

    def _finish(self, slot: _Slot, reason: FinishReason, *, flush: bool = True) -> None:
        req = slot.req
        assert req is not None and slot.text is not None
        now = time.perf_counter_ns()
        tail = ""
        entries: tuple[TokenLogprob, ...] = ()
        if flush and isinstance(slot.text, AlignedTextStream):
            tail, entries = slot.text.flush_tokens()
        elif flush:
            tail = slot.text.flush()
        if tail or entries:
            req.emit(Delta(tail, slot.n_unsent, entries))
        first = slot.t_first or now
        finish = Finish(
            reason=reason,
            prompt_tokens=len(req.prompt),
            cached_tokens=slot.n_cached,
            completion_tokens=slot.n_generated,
            prompt_eval_ns=first - slot.t_start,
            eval_ns=now - first,
            queued_ns=slot.t_start - req.t_submit,
        )
        if slot.drafter is not None and slot.drafter.turned_off:
            self.counters["spec_turned_off"] += 1
        self._release(slot)  # before the Finish goes out: whoever sees it sees the slot free
        req.emit(finish)
        # a prompt the cache did not hold is kept now (after the answer went out), so that a later
        # visit restores it even if other prompts have taken this slot in between
        if (
            self.cache is not None
            and reason != "cancelled"
            and req.params.adapter is None
            and self._uncached(req.prompt)
        ):
            self._save(slot)

    def _uncached(self, prompt: list[int]) -> bool:
        assert self.cache is not None
        return len(prompt) - self.cache.covered(prompt) >= self.cache.min_tokens

    def _release(self, slot: _Slot) -> None:
        assert slot.req is not None
        self.b.free_sampler(slot.req.sampler)
        slot.req, slot.todo, slot.text, slot.drafter = None, [], None, None
        with self._cond:
            self._admitted -= 1

    def _fail(self, slots: list[_Slot], exc: Exception) -> None:
        err = exc if isinstance(exc, EdgeError) else EdgeError(f"generation failed: {exc}")
        for slot in slots:
            if slot.req is None:
                continue
            req = slot.req
            self.b.keep_prefix(slot.seq, 0)  # the cache state of a failed batch is unknown
            slot.cached = []
            self._release(slot)
            req.emit(err)

    def _shutdown(self) -> None:
        err = UnavailableError("the engine was closed during this request; retry")
        self._fail([s for s in self.slots if s.req is not None], err)
        with self._cond:
            while self._waiting:
                req = self._waiting.popleft()
                req.emit(err)
                self.b.free_sampler(req.sampler)
                self._admitted -= 1


class GenerationStream:
    """The async iterator `Engine.generate` returns: Deltas, then one Finish. Closing it cancels."""

    def __init__(self, scheduler: Scheduler, req: Request):
        self._scheduler = scheduler
        self._req = req
        self._done = False

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> Event:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._req.events.get()
        except BaseException:  # task cancelled (client disconnect) while waiting
            self.cancel()
            raise
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if isinstance(item, Finish):
            self._done = True
        return item

    async def aclose(self) -> None:
        self.cancel()

    def cancel(self) -> None:
        if not self._done:
            self._done = True
            self._scheduler.cancel(self._req)

    def __del__(self) -> None:
        if not self._done:
            self._req.cancelled = True  # no lock in a finalizer: the decode thread frees it


class SchedulerEngine(Engine):
    """The Engine half every scheduler-driven backend shares (llama.cpp, ONNX).

    A subclass sets `scheduler`, `info`, `n_threads` and `_closed`, and implements tokenize,
    detokenize and close (freeing its native objects differs per backend)."""

    scheduler: Scheduler
    n_threads: int
    _closed: bool

    @property
    def heartbeat(self) -> float:
        """time.monotonic() of the decode loop's last iteration (for the watchdog)."""
        return self.scheduler.heartbeat

    def generate(self, prompt: list[int], params: SamplingParams, *, stream: bool = True) -> GenerationStream:
        """Submit now (QueueFullError / ContextOverflowError / BadRequestError raise here), stream later."""
        if self._closed:
            raise EdgeError("this engine is closed")
        if params.adapter is not None and not hasattr(self.scheduler.b, "set_adapter"):
            raise BadRequestError(
                f"{self.info.name} is an {self.info.format.upper()} model, which does not apply LoRA adapters; "
                "serve the adapter on the GGUF form of the model",
                param="model",
            )
        req = self.scheduler.submit(list(prompt), params, hold=not stream)
        return GenerationStream(self.scheduler, req)

    def stats(self) -> dict:
        return {**self.scheduler.stats(), "n_ctx": self.info.n_ctx, "threads": self.n_threads}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
