"""Driving one generation for a handler: prime, stream or collect, and always free the slot.

`start()` waits for the engine's first event before any byte is sent, so a full queue or an
overlong prompt becomes a proper HTTP error (503 + Retry-After, 400) instead of a broken stream.
Whatever way a request ends (done, client gone, server error), the engine iterator is closed,
which cancels the generation and frees its slot at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import StreamingResponse

from edge.engine.base import Delta, Engine, Event, EventStream, Finish, SamplingParams, TokenLogprob
from edge.server.limits import Deadline
from edge.server.metrics import Metrics

DISCONNECT_POLL_EVERY = 8  # events between client checks of a non-streaming request


class ClientGone(Exception):
    """The client disconnected before the response started (answered with 499, nginx's code)."""


class Run:
    """One primed generation: `first` is already received; iterate with `events()` exactly once."""

    def __init__(
        self,
        agen: EventStream,
        first: Event,
        t0: float,
        metrics: Metrics,
        streamed: bool = True,
        params: SamplingParams | None = None,
    ):
        self._agen, self.first, self.t0, self._metrics = agen, first, t0, metrics
        self.params = params or SamplingParams()  # what the generation was asked
        self._streamed = streamed  # False: the text came in one piece at the end (see Engine.generate)
        self.finish: Finish | None = None
        self.logprobs: list[TokenLogprob] = []  # what `collect` gathered (requests with logprobs)
        self._closed = False

    async def events(self) -> AsyncGenerator[Event, None]:
        try:
            ev = self.first
            seen_text = False
            while True:
                if isinstance(ev, Delta) and not seen_text and self._streamed:
                    seen_text = True
                    self._metrics.ttft.observe(time.perf_counter() - self.t0)
                if isinstance(ev, Finish):
                    if not self._streamed and ev.completion_tokens:  # first token: right after the prompt
                        self._metrics.ttft.observe((ev.queued_ns + ev.prompt_eval_ns) / 1e9)
                    self.finish = ev
                    self._metrics.observe_finish(ev)
                yield ev
                if isinstance(ev, Finish):
                    return
                ev = await self._agen.__anext__()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self.finish is None:
                self._metrics.cancelled.inc()
            await self._agen.aclose()

    def elapsed_ns(self) -> int:
        return int((time.perf_counter() - self.t0) * 1e9)


async def start(
    engine: Engine,
    prompt: list[int],
    params: SamplingParams,
    request: Request,
    metrics: Metrics,
    t0: float,
    timeout: float = 0.0,
    *,
    stream: bool = True,
) -> Run:
    """Submit and wait for the first event, giving up (and freeing the place) if the client leaves.

    `timeout` > 0: the whole request ends by t0 + timeout (edge.server.limits.Deadline)."""
    agen = engine.generate(prompt, params, stream=stream)
    if timeout > 0:
        agen = Deadline(agen, t0 + timeout, timeout)
    first_task = asyncio.ensure_future(agen.__anext__())
    gone_task = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({first_task, gone_task}, return_when=asyncio.FIRST_COMPLETED)
        if not first_task.done():
            first_task.cancel()
            await asyncio.gather(first_task, return_exceptions=True)
            raise ClientGone()
        return Run(agen, first_task.result(), t0, metrics, streamed=stream, params=params)
    except BaseException:
        await agen.aclose()
        raise
    finally:
        gone_task.cancel()
        await asyncio.gather(gone_task, return_exceptions=True)


async def collect(run: Run, request: Request) -> tuple[str, Finish]:
    """The whole text and the Finish (the tokens' log probabilities, if asked, in `run.logprobs`);
    stops (and frees the slot) when the client disconnects."""
    parts: list[str] = []
    events = run.events()
    try:
        n = 0
        async for ev in events:
            if isinstance(ev, Delta):
                parts.append(ev.text)
                run.logprobs.extend(ev.logprobs)
            n += 1
            if n % DISCONNECT_POLL_EVERY == 0 and await request.is_disconnected():
                raise ClientGone()
    finally:
        await events.aclose()
    assert run.finish is not None, "the engine stream ended without a Finish event"
    return "".join(parts), run.finish


class EventStreamResponse(StreamingResponse):
    """A StreamingResponse that closes its body generator however the response ends.

    Starlette leaves a half-consumed body iterator to the garbage collector when the client goes
    away; closing it here cancels the generation at once.
    """

    def __init__(self, body: AsyncIterator[bytes], media_type: str, on_close: Callable[[], object]):
        super().__init__(body, media_type=media_type, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._body = body
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._body.aclose()  # type: ignore[attr-defined]
            await self._on_close()  # type: ignore[misc]


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
