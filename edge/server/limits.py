"""Per-request limits: `between` (numeric bounds whose 400 names the allowed range) and the request deadline.

The deadline (`--request-timeout`, from the moment the handler starts: queue, prompt and generation
included) ends a request with `RequestTimeoutError` (408):
- before the first event (still queued, or evaluating a long prompt): an ordinary 408 error response;
- after the headers went out (streaming): the handlers' error path, i.e. an SSE `{"error": ...}` event
  then `data: [DONE]` (OpenAI) or a last `{"error": ...}` NDJSON line (Ollama), after the text
  already sent. Not `finish_reason: "length"`: that promises the answer was cut by max_tokens or the
  context, which clients act on ("continue"); a timeout is the server's limit and is reported as one.
Either way the generation is cancelled and its slot freed at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

from edge.config import parse_duration
from edge.engine.base import Event, EventStream
from edge.errors import BadRequestError, RequestTimeoutError


def between(lo: float, hi: float) -> AfterValidator:
    """A pydantic validator for `Annotated[int, between(lo, hi)]` (or float): a value outside [lo, hi]
    fails with "must be between lo and hi, got v"."""

    def check(value: float) -> float:
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return value

    return AfterValidator(check)


def deadline_of(t0: float, timeout: float) -> float | None:
    """perf_counter() time by which the request must end; None when the limit is off (0)."""
    return t0 + timeout if timeout > 0 else None


class Deadline:
    """Wraps an engine's event stream: an event not arrived by `deadline` cancels the generation
    (closing the inner stream frees the slot) and raises RequestTimeoutError.

    One timer serves the whole request: when it fires it cancels the task waiting for the next event,
    and that wait turns into the timeout. (asyncio.wait_for per event would make a task and a timer
    for every token, on the event loop that shares the CPU with llama.cpp's threads.)"""

    def __init__(self, events: EventStream, deadline: float, timeout: float):
        self._events, self._deadline, self._timeout = events, deadline, timeout
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Task | None = None  # the task waiting for the next event, while it waits
        self._fired = False

    def __aiter__(self) -> Deadline:
        return self

    async def __anext__(self) -> Event:
        if time.perf_counter() >= self._deadline:
            await self._expire()
        if self._timer is None:
            left = self._deadline - time.perf_counter()
            self._timer = asyncio.get_running_loop().call_later(max(left, 0.0), self._fire)
        task = self._waiter = asyncio.current_task()
        try:
            return await self._events.__anext__()
        except StopAsyncIteration:
            if self._timer is not None:
                self._timer.cancel()  # the stream ended in time: the timer goes now, not at the deadline
            raise
        except asyncio.CancelledError:
            # our timer's cancellation (and nobody else's: uncancel counts them) becomes the timeout
            if self._fired and task is not None and _uncancel(task) == 0:
                await self._expire()
            raise
        finally:
            self._waiter = None

    def _fire(self) -> None:
        if self._waiter is not None:
            self._fired = True
            self._waiter.cancel()
        # otherwise the consumer is busy elsewhere: its next __anext__ finds the deadline passed

    async def _expire(self) -> None:
        await self.aclose()
        raise RequestTimeoutError(
            f"the request took longer than {self._timeout:g} s (the server's --request-timeout); ask for fewer "
            "tokens (max_tokens / options.num_predict) or a shorter prompt, or raise the limit"
        ) from None

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        await self._events.aclose()


def _uncancel(task: asyncio.Task) -> int:
    """Task.uncancel() (Python 3.11+); 0 before it, where cancellations are not counted."""
    uncancel = getattr(task, "uncancel", None)
    return uncancel() if uncancel is not None else 0


def _keep_alive(value: Any) -> float | None:
    """Ollama's keep_alive: "5m", "1h30m", seconds; negative: forever (edge.config.parse_duration)."""

    if value is None:
        return None
    try:
        return parse_duration(value)
    except BadRequestError as exc:
        raise ValueError(exc.message) from None


# seconds a model stays after the request (math.inf: forever; None: the server's default)
KeepAlive = Annotated[float | None, BeforeValidator(_keep_alive)]
