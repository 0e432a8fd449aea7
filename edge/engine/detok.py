"""Incremental detokenization: token bytes -> text that never splits a UTF-8 character, with stop strings.

Backend-neutral: a backend hands over the raw bytes of each generated token (a byte-fallback token
may carry half of an emoji); `TextStream` turns them into the text that is safe to send now.

- Bytes are buffered until they decode (an incremental UTF-8 decoder); invalid bytes become U+FFFD
  instead of an exception, since a sampler can emit any byte sequence.
- Text that could still be the beginning of a stop string is held back until it cannot; when a stop
  string completes, the text before it is returned and the stop string itself never is.
"""

from __future__ import annotations

import codecs
from collections import deque
from collections.abc import Callable
from dataclasses import replace

from edge.engine.base import TokenLogprob


class StopMatcher:
    """Cuts the output at the first stop string; holds back a tail that may start one."""

    def __init__(self, stops: tuple[str, ...] | list[str] = ()):
        self.stops = tuple(s for s in stops if s)
        self._held = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit now, whether a stop string was hit)."""
        buf = self._held + text
        if not self.stops:
            self._held = ""
            return buf, False
        hit = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if hit >= 0:
            self._held = ""
            return buf[:hit], True
        keep = self._partial_suffix(buf)
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """The held-back tail, once generation ended for another reason."""
        out, self._held = self._held, ""
        return out

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest suffix of buf that is a proper prefix of some stop string."""
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:k]):
                    best = k
                    break
        return best


class TextStream:
    """Bytes of generated tokens in, whole characters out, stop strings applied."""

    def __init__(self, stops: tuple[str, ...] | list[str] = ()):
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopMatcher(stops)

    def push(self, piece: bytes) -> tuple[str, bool]:
        """Return (text to emit, stopped)."""
        return self._stops.push(self._utf8.decode(piece))

    def flush(self) -> str:
        """Everything still buffered (an incomplete character becomes U+FFFD)."""
        text, stopped = self._stops.push(self._utf8.decode(b"", final=True))
        return text if stopped else text + self._stops.flush()


class AlignedTextStream(TextStream):
    """A TextStream that also hands back per-token entries (log probabilities) with the text they produced.

    Each token occupies the characters [start, end) of the decoded answer; a token whose bytes end
    inside a UTF-8 character reaches to the end of that character. An entry goes out with the text
    that completes its characters, so entries and text stay aligned whatever the UTF-8 decoder or
    the stop matcher holds back; when a stop string cuts the answer, entries of tokens that lie
    wholly inside the cut part are dropped with it. Used only for requests that ask for entries.
    """

    def __init__(self, stops: tuple[str, ...] | list[str] = ()):
        super().__init__(stops)
        self._decoded = 0  # characters out of the UTF-8 decoder so far
        self._sent = 0  # characters handed back so far
        self._pending: deque[tuple[int, int, TokenLogprob]] = deque()  # (start, end, entry) not yet handed back

    def push_token(self, piece: bytes, entry: TokenLogprob) -> tuple[str, bool, tuple[TokenLogprob, ...]]:
        """Return (text to emit, stopped, entries that go with that text)."""
        start = self._decoded
        decoded = self._utf8.decode(piece)
        self._decoded += len(decoded)
        incomplete = bool(self._utf8.getstate()[0])  # bytes of a character still to come
        self._pending.append((start, self._decoded + incomplete, entry))
        text, stopped = self._stops.push(decoded)
        self._sent += len(text)
        if stopped:
            kept = self._take(lambda s, e: s < self._sent or e <= self._sent)
            self._pending.clear()  # tokens wholly inside the stop string
            return text, True, kept
        return text, False, self._take(lambda s, e: e <= self._sent)

    def flush_tokens(self) -> tuple[str, tuple[TokenLogprob, ...]]:
        """Everything still buffered, and every entry not yet handed back."""
        text = self.flush()
        self._sent += len(text)
        return text, self._take(lambda s, e: True)

    def _take(self, keep: Callable[[int, int], bool]) -> tuple[TokenLogprob, ...]:
        out = []
        while self._pending and keep(*self._pending[0][:2]):
            start, _, entry = self._pending.popleft()
            out.append(replace(entry, offset=min(start, self._sent)))
        return tuple(out)
