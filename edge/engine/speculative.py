"""Prompt-lookup drafts: speculative decoding without a draft model (n-gram lookup in the request itself).

A request's context (its prompt, then every token it generated) often repeats itself: an answer quotes
the passage it was given, JSON copies field values, a list is repeated with edits. `Drafter` finds the
last few tokens of the context earlier in it and proposes the tokens that followed there (llama.cpp's
`ngram-simple` speculative type and llama-cpp-python's `LlamaPromptLookupDecoding` do the same). The
scheduler feeds the drafted tokens after the last sampled one in the same batched decode as the other
slots, with logits for every position, and accepts them one by one while the sampler, run on each
position in turn, picks the drafted token.

That acceptance rule is exact for any sampler chain, not only greedy: the sampler draws each position's
token from the very distribution plain decoding would draw it from (penalties, grammar and the random
state advance exactly as they would), and a drafted token only saves the decode that would have
produced the same token. With a fixed seed the output is the same token for token.

A draft costs the logits rows of its tokens even when they are rejected, so a request whose drafts are
rarely accepted stops drafting (`Drafter.record`), and the scheduler drafts only while few slots are
busy (a full batch already keeps the cores busy).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpecConfig:
    draft_max: int = 8  # most tokens drafted for one slot in one step (logits rows reserved per slot)
    draft_start: int = 4  # the first draft's length; it grows by 2 after a fully accepted draft, shrinks by 1 otherwise
    ngram_max: int = 3  # the longest suffix looked up; a longer match is tried first
    ngram_min: int = 2  # the shortest (a single token matches too often to predict the next)
    min_accept: float = 0.3  # a request whose drafts are accepted less often than this stops drafting...
    probe: int = 24  # ...once it has drafted this many tokens
    max_busy: int = 2  # draft only while at most this many slots hold a request


class Drafter:
    """The n-gram index of one request's context and its draft statistics (decode thread only).

    For each suffix length n, `_follow[n]` maps an n-gram to the position right after its latest
    occurrence that already has a token after it, so a lookup never finds the context's own suffix."""

    def __init__(self, config: SpecConfig, prompt: list[int]):
        self.config = config
        self.tokens: list[int] = []
        self._follow: dict[int, dict[tuple[int, ...], int]] = {
            n: {} for n in range(config.ngram_min, config.ngram_max + 1)
        }
        self.k = config.draft_start
        self.drafted = 0
        self.accepted = 0
        for token in prompt:
            self.push(token)

    def push(self, token: int) -> None:
        """Append a token of the context (a prompt token, or one the request generated)."""
        tokens = self.tokens
        end = len(tokens)
        for n, follow in self._follow.items():
            if end >= n:
                follow[tuple(tokens[end - n :])] = end
        tokens.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to min(limit, the current draft length) tokens that followed the context's suffix earlier."""
        k = min(limit, self.k)
        if k <= 0:
            return []
        tokens = self.tokens
        for n in range(self.config.ngram_max, self.config.ngram_min - 1, -1):
            if len(tokens) <= n:
                continue
            start = self._follow[n].get(tuple(tokens[-n:]))
            if start is not None:
                return tokens[start : start + k]
        return []

    def record(self, drafted: int, accepted: int) -> bool:
        """Count one verified draft; False when this request should stop drafting."""
        self.drafted += drafted
        self.accepted += accepted
        if accepted == drafted:
            self.k = min(self.config.draft_max, self.k + 2)
        else:
            self.k = max(1, self.k - 1)
        cfg = self.config
        return self.drafted < cfg.probe or self.accepted >= cfg.min_accept * self.drafted
