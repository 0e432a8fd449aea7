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

A draft pays only when enough of it is accepted: verifying k drafted tokens makes the decode call
longer (on a small CPU one call of 2 tokens can cost 1.7 times one of a single token), and a rejected
token is paid for and thrown away. So every draft is priced. `DecodeCost` learns, from the decode calls
the scheduler makes anyway, what a call of n tokens costs against one of a single token; each request's
`Drafter` learns its own per-token acceptance probability p, from its verified drafts and from the
drafts it proposed but did not send (checked against the tokens that came next, at no cost). Under a
geometric model a draft of k tokens adds E[k] = p + p^2 + ... + p^k accepted tokens, and `choose`
drafts the k that maximises tokens per unit of time, only when that beats not drafting by `min_gain`.
A request with nothing to copy therefore stops drafting (and starts again when it starts copying), and
on a machine where longer calls are nearly free it drafts long.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpecConfig:
    draft_max: int = 16  # most tokens drafted for one slot in one step (logits rows reserved per slot)
    draft_short: int = 8  # most tokens drafted from a match shorter than `long_ngram`
    ngram_max: int = 3  # the longest suffix looked up for a short match; a longer match is tried first
    ngram_min: int = 2  # the shortest (a single token matches too often to predict the next)
    long_ngram: int = 8  # a suffix of this many tokens found earlier: a verbatim copy, with its own evidence
    min_gain: float = 1.05  # draft only when the expected tokens per second beat no draft by this factor
    explore_p: float = 0.8  # from this acceptance on, a call size not measured yet is priced optimistically
    memory: float = 0.97  # per observed draft token, older acceptance evidence fades by this factor
    max_busy: int = 2  # draft only while at most this many slots hold a request


def expected_accepted(p: float, k: int) -> float:
    """E[accepted tokens] of a k-token draft when each token is accepted with probability p, in order:
    p + p^2 + ... + p^k."""
    if p >= 1.0:
        return float(k)
    return p * (1.0 - p**k) / (1.0 - p)


def choose(
    p: float,
    limit: int,
    cost: DecodeCost,
    *,
    n_base: int = 1,
    gain_base: float = 1.0,
    min_gain: float = 1.0,
    explore: bool = False,
) -> tuple[int, float]:
    """The draft length k <= limit that maximises expected tokens per unit of time, and its expected
    accepted tokens; (0, 0.0) when no draft beats plain decoding by `min_gain`.

    The step already decodes `n_base` tokens expected to give `gain_base` tokens (one per generating
    slot, plus drafts chosen before this one); a k-token draft makes it n_base + k tokens long.
    `explore` prices the call sizes not measured yet optimistically (`DecodeCost.ratio`)."""
    base = gain_base / cost.ratio(n_base)
    best, best_k, best_e = base * min_gain, 0, 0.0
    for k in range(1, limit + 1):
        e = expected_accepted(p, k)
        rate = (gain_base + e) / cost.ratio(n_base + k, optimistic=explore)
        if rate > best:
            best, best_k, best_e = rate, k, e
    return best_k, best_e


class DecodeCost:
    """Time of one decode call by its number of tokens, learned online: an exponentially weighted mean
    per size, so `ratio(n)` = time(n tokens) / time(1 token) follows the machine as it is (other load,
    thermal state) without a benchmark at start.

    A size not measured yet is read off the chord between the measured sizes around it; beyond the
    largest, along the chord of the two largest (`prior_slope` per extra token before any, and no
    steeper than it with one): optimistic enough that a request that copies well tries a longer draft,
    whose call then measures the real cost. `learn=False` keeps the prior (tests, fixed models).

    A size is measured only by calling it, and a size judged too dear is not called again: so the first
    call of each size is not taken as a measurement (it may pay for one-off work), and a size not called
    for `stale` decode calls is forgotten and tried again, so that one slow sample cannot switch drafting
    off for good."""

    def __init__(
        self,
        prior_slope: float = 0.5,
        *,
        weight: float = 0.1,
        learn: bool = True,
        n_max: int = 64,
        stale: int = 512,
    ):
        self.prior_slope = prior_slope
        self.weight = weight  # share of a new sample in its size's mean
        self.learn = learn
        self.n_max = n_max
        self.stale = stale
        self._mean: dict[int, float] = {}  # tokens in the call -> mean seconds
        self._last: dict[int, int] = {}  # tokens in the call -> the number of the latest such call
        self._calls = 0

    def record(self, n: int, seconds: float) -> None:
        """One decode call of n tokens, all of them sampled (no prompt chunk in it), took `seconds`."""
        if not self.learn or n < 1 or n > self.n_max or seconds <= 0:
            return
        self._calls += 1
        first = n not in self._last
        self._last[n] = self._calls
        old = self._mean.get(n)
        if old is not None:  # one stall (another process, a page fault) moves the mean a little, not a lot
            self._mean[n] = old + self.weight * (min(seconds, 3 * old) - old)
        elif n == 1 or not first:  # the first call of a size > 1 may pay for one-off work: not a measurement
            self._mean[n] = seconds
        if self._calls % 64 == 0:
            self._forget()

    def _forget(self) -> None:
        for n, last in list(self._last.items()):
            if n > 1 and self._calls - last > self.stale:
                self._mean.pop(n, None)
                del self._last[n]

    def ratio(self, n: int, *, optimistic: bool = False) -> float:
        """What a call of n tokens costs against one of a single token.

        `optimistic` prices a size not measured yet as the largest measured size of 2 tokens or more
        below it, so that it is tried and measured. The cost of a call is not smooth in its size: a
        CPU's kernels multiply in tiles of columns (repacked Q4_K four at a time), and on Gemma-3 Q4_K_M
        here a call of 8 tokens costs 3.0 single ones, one of 5 costs 3.2, one of 4 costs 2.0. A chord
        between measured sizes would never find the cheap ones; the scheduler explores only for a
        request that copies well, whose exploratory calls still pay for most of their cost."""
        if n <= 1:
            return 1.0
        one = self._mean.get(1)
        if one is None:
            return 1.0 + self.prior_slope * (n - 1)
        known = sorted((m, max(1.0, t / one)) for m, t in self._mean.items() if m > 1)
        lo, hi = (1, 1.0), None
        for m, r in known:
            if m == n:
                return r
            if m < n:
                lo = (m, r)
            elif hi is None:
                hi = (m, r)
        if optimistic and lo[0] > 1:
            return lo[1]
        if hi is not None:  # between two measured sizes: on the chord
            return lo[1] + (hi[1] - lo[1]) * (n - lo[0]) / (hi[0] - lo[0])
        return lo[1] + self._slope_above(known) * (n - lo[0])

    def _slope_above(self, known: list[tuple[int, float]]) -> float:
        """Cost per extra token beyond the largest measured size: the chord of the two largest measured
        sizes; with one measured, no steeper than the prior. A CPU's step from one token to two is the
        dearest (a matrix-vector product becomes a matrix product: 1.8-1.9x on SmolLM2 and Gemma-3 here,
        then 0.3-0.45 per further token), so extending that first step would price every longer draft
        out before one was ever measured."""
        if not known:
            return self.prior_slope
        if len(known) == 1:
            m, r = known[0]
            return min(self.prior_slope, (r - 1.0) / (m - 1))
        (m1, r1), (m2, r2) = known[-2], known[-1]
        return max(0.0, (r2 - r1) / (m2 - m1))

    def snapshot(self) -> dict[int, float]:
        """The measured ratio per size (for logs and tests)."""
        one = self._mean.get(1)
        return {n: t / one for n, t in sorted(self._mean.items())} if one else {}


class Drafter:
    """The n-gram index of one request's context and its acceptance evidence (decode thread only).

    For each suffix length n, `_follow[n]` maps an n-gram to the position right after its latest
    occurrence that already has a token after it, so a lookup never finds the context's own suffix.

    A match of `long_ngram` tokens is looked up first: the context repeats a whole stretch (a list copied
    line by line, a record, a loop the model fell into), and what followed it there is likely to follow
    again for many tokens, as llama.cpp's ngram-simple assumes (12 tokens, drafts of 48). Such a match
    drafts up to `draft_max` tokens and keeps acceptance evidence of its own; a short match (`ngram_max`
    down to `ngram_min` tokens) drafts up to `draft_short`. Mixing the two would price every long copy at
    the acceptance of the short guesses between them.

    Acceptance evidence is a count of hits among trials (one trial per drafted token checked, up to and
    including the first miss), each older trial fading by `memory`, so p follows what the request does
    now: p = (hits + 1/2) / (trials + 1)."""

    def __init__(self, config: SpecConfig, prompt: list[int]):
        self.config = config
        self.tokens: list[int] = []
        sizes = set(range(config.ngram_min, config.ngram_max + 1))
        if config.long_ngram > config.ngram_max:
            sizes.add(config.long_ngram)
        self._sizes = sorted(sizes, reverse=True)  # lookup order: the longest first
        self._follow: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self._sizes}
        self.accepted = 0  # drafted tokens accepted
        self.declined = 0  # proposals the cost rule did not send (counted per step)
        self.hits, self.trials = 0.0, 0.0  # evidence of short matches
        self.hits_long, self.trials_long = 0.0, 0.0  # evidence of long matches
        self.long = False  # whether the latest proposal came from a long match
        self._shadow: list[int] = []  # a proposal not sent for verification, checked against what comes next
        self._shadow_long = False
        self._index(prompt)

    @property
    def p(self) -> float:
        """The estimated probability that the next drafted token of a short match is accepted."""
        return (self.hits + 0.5) / (self.trials + 1.0)

    @property
    def p_long(self) -> float:
        """The same for a long match."""
        return (self.hits_long + 0.5) / (self.trials_long + 1.0)

    def _index(self, prompt: list[int]) -> None:
        """The prompt's n-grams in one pass per n (what pushing its tokens one by one gives, built by
        `zip` and `dict` in C: the index of a long system prompt is made while the other slots wait)."""
        self.tokens = list(prompt)
        end = len(prompt) - 1  # the last token has no follower yet
        for n, follow in self._follow.items():
            # the n-gram starting at s maps to s + n (a later occurrence overwrites an earlier one)
            follow.update(zip(zip(*(prompt[j:end] for j in range(n))), range(n, end + 1)))

    def push(self, token: int) -> None:
        """Append a token of the context (a prompt token, or one the request generated)."""
        if self._shadow:
            hit = token == self._shadow[0]
            self._observe(hit, self._shadow_long)
            self._shadow = self._shadow[1:] if hit else []
        tokens = self.tokens
        end = len(tokens)
        for n, follow in self._follow.items():
            if end >= n:
                follow[tuple(tokens[end - n :])] = end
        tokens.append(token)

    def propose(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the context's suffix at its latest earlier occurrence (at
        most `draft_short` after a short match); sets `long`."""
        self.long = False
        if limit <= 0:
            return []
        tokens = self.tokens
        for n in self._sizes:
            if len(tokens) <= n:
                continue
            start = self._follow[n].get(tuple(tokens[-n:]))
            if start is not None:
                self.long = n >= self.config.long_ngram
                if not self.long:
                    limit = min(limit, self.config.draft_short)
                return tokens[start : start + limit]
        return []

    def draft(
        self, limit: int, cost: DecodeCost, *, n_base: int = 1, gain_base: float = 1.0
    ) -> tuple[list[int], float]:
        """The draft worth verifying in a step that already decodes `n_base` tokens expected to give
        `gain_base` (see `choose`), and its expected accepted tokens. A proposal not worth it is kept as a
        shadow, so the tokens that follow still teach p; ([], 0.0) then."""
        proposal = self.propose(limit)
        if not proposal:
            return [], 0.0
        p = self.p_long if self.long else self.p
        k, expected = choose(
            p,
            len(proposal),
            cost,
            n_base=n_base,
            gain_base=gain_base,
            min_gain=self.config.min_gain,
            explore=p >= self.config.explore_p,
        )
        if k == 0:
            self.declined += 1
            self.watch(limit, proposal)
            return [], 0.0
        self._shadow = []  # the draft itself is checked now
        return proposal[:k], expected

    def watch(self, limit: int, proposal: list[int] | None = None) -> None:
        """Keep a proposal as a shadow only (a step that does not draft), to learn p at no cost; one
        shadow at a time, checked to its end or first miss."""
        if not self._shadow:
            self._shadow = proposal if proposal is not None else self.propose(limit)
            self._shadow_long = self.long

    def record(self, drafted: int, accepted: int) -> None:
        """Count one verified draft (the latest proposal's): `accepted` hits, then a miss if not all of it
        was accepted."""
        self.accepted += accepted
        for _ in range(accepted):
            self._observe(True, self.long)
        if accepted < drafted:
            self._observe(False, self.long)

    @property
    def turned_off(self) -> bool:
        """Drafting did not pay for this request: it passed up a proposal in more steps than its drafts
        spared steps (accepted tokens)."""
        return self.declined > self.accepted

    def _observe(self, hit: bool, long: bool) -> None:
        m = self.config.memory
        if long:
            self.hits_long = self.hits_long * m + hit
            self.trials_long = self.trials_long * m + 1.0
        else:
            self.hits = self.hits * m + hit
            self.trials = self.trials * m + 1.0
