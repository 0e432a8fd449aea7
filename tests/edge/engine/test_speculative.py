"""Prompt-lookup speculation: the drafter, the scheduler's verify step on a fake backend that checks every
KV position, and the real bundled models (greedy output byte-identical with and without drafts, the
sampled distribution kept, the per-request off-switch)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from edge.engine import open_engine
from edge.engine.base import Delta, Finish, SamplingParams
from edge.engine.scheduler import Scheduler
from edge.engine.speculative import DecodeCost, Drafter, SpecConfig, choose, expected_accepted
from tests.support.fake_backend import FakeBatcher, SpecFakeBatcher, collect_text

# ---- the drafter ---------------------------------------------------------------------------------


def test_drafter_proposes_what_followed_the_suffix_earlier():
    d = Drafter(SpecConfig(), [5, 6, 7, 8, 9, 10, 1, 2, 6, 7])
    assert d.propose(4) == [8, 9, 10, 1]  # "6 7" was followed by 8 9 10 1
    assert d.propose(2) == [8, 9]


def test_drafter_prefers_the_longer_and_later_match():
    # "1 2 3" -> 40 (3-gram) beats the later "2 3" -> 50 (2-gram); among equal lengths the latest wins
    d = Drafter(SpecConfig(), [1, 2, 3, 40, 9, 2, 3, 50, 9, 1, 2, 3])
    assert d.propose(1) == [40]
    d = Drafter(SpecConfig(), [2, 3, 40, 2, 3, 50, 7, 2, 3])
    assert d.propose(1) == [50]


def test_drafter_never_matches_its_own_suffix_and_needs_two_tokens():
    assert Drafter(SpecConfig(), [1, 2, 3, 4]).propose(4) == []
    assert Drafter(SpecConfig(), [7, 1, 9, 1]).propose(4) == []  # a lone token is not enough
    d = Drafter(SpecConfig(), [1, 2, 3])
    d.push(1)
    d.push(2)
    assert d.propose(4) == [3, 1, 2]  # tokens pushed later extend the index and the copy


@pytest.mark.parametrize("seed", range(5))
def test_prompt_index_drafts_as_pushing_the_prompt_token_by_token(seed):
    """The prompt is indexed in one pass; every later proposal must be the one a drafter that saw the
    prompt token by token makes (a small vocabulary, so n-grams repeat and later ones overwrite)."""
    import random

    r = random.Random(seed)
    prompt = [r.randrange(6) for _ in range(r.randrange(0, 300))]
    bulk, pushed = Drafter(SpecConfig(), prompt), Drafter(SpecConfig(), [])
    for token in prompt:
        pushed.push(token)
    for _ in range(50):
        assert bulk.propose(8) == pushed.propose(8)
        token = r.randrange(6)
        bulk.push(token)
        pushed.push(token)


# ---- the cost rule ------------------------------------------------------------------------------------

# Measured on a 2-core VM (SmolLM2 Q4_1): a decode call of 2 tokens costs 1.74 single-token calls, 9 cost 6.3
COSTLY = {1: 1.0, 2: 1.74, 3: 2.4, 4: 3.1, 5: 3.8, 9: 6.3}


def measured(times: dict[int, float]) -> DecodeCost:
    cost = DecodeCost()
    for n, t in times.items():
        cost.record(n, t / 100)
        cost.record(n, t / 100)  # the first call of a size is not a measurement
    return cost


def test_expected_accepted_is_the_geometric_sum():
    assert expected_accepted(0.5, 3) == pytest.approx(0.5 + 0.25 + 0.125)
    assert expected_accepted(1.0, 4) == 4.0
    assert expected_accepted(0.0, 4) == 0.0


def test_no_draft_when_the_cost_says_it_cannot_pay():
    costly = measured(COSTLY)
    assert costly.ratio(2) == pytest.approx(1.74) and costly.ratio(9) == pytest.approx(6.3)
    for p in (0.0, 0.3, 0.6, 0.8):  # below ~0.85 no length pays on this machine
        assert choose(p, 8, costly, min_gain=1.05) == (0, 0.0), p
    # the same acceptance drafts where a longer call is cheap
    cheap = measured({1: 1.0, 2: 1.05, 5: 1.2, 9: 1.5})
    k, e = choose(0.6, 8, cheap, min_gain=1.05)
    assert k >= 2 and e == pytest.approx(expected_accepted(0.6, k))
    # even a perfect record does not pay when every drafted token costs a full call
    assert choose(1.0, 8, DecodeCost(1.0, learn=False), min_gain=1.05)[0] == 0


def test_draft_length_grows_with_acceptance():
    costly = measured(COSTLY)
    lengths = [choose(p, 8, costly, min_gain=1.05)[0] for p in (0.9, 0.95, 0.99)]
    assert lengths[0] >= 1 and lengths == sorted(lengths) and lengths[-1] > lengths[0], lengths
    # within the step of a busy batch the same draft is judged against the whole batch
    assert choose(0.9, 8, costly, n_base=2, gain_base=2.0, min_gain=1.05)[0] <= lengths[0]


def test_decode_cost_learns_online_and_interpolates():
    cost = DecodeCost(prior_slope=0.5)
    assert cost.ratio(5) == pytest.approx(3.0)  # the prior before any call
    for _ in range(30):
        cost.record(1, 0.010)
        cost.record(3, 0.020)
    assert cost.ratio(3) == pytest.approx(2.0)
    assert cost.ratio(5) == pytest.approx(3.0)  # extended along the largest measured size below it
    cost.record(3, 10.0)  # one stall moves the mean by a bounded step
    assert cost.ratio(3) < 2.5
    expected = cost.ratio(6)
    cost.record(6, 1.0)  # the first call of a size (llama.cpp builds its graph) is not a measurement
    assert cost.ratio(6) == pytest.approx(expected)
    cost.record(6, 0.030)
    assert cost.ratio(6) == pytest.approx(3.0)
    assert DecodeCost(learn=False).snapshot() == {}


def test_the_dear_first_step_is_not_extended_to_longer_drafts():
    """One token to two is a CPU's dearest step (measured: Gemma-3 Q4_K_M 1.83x, then 3.44x at 8 tokens):
    with only 2 measured, a longer draft is priced at no more than the prior's slope beyond it, so it is
    tried and measured; then sizes in between lie on the measured chord."""
    cost = measured({1: 1.0, 2: 1.83})
    assert cost.ratio(8) == pytest.approx(1.83 + 0.5 * 6)  # not 1 + 0.83 * 7 = 6.8
    k, _ = choose(0.9, 8, cost, min_gain=1.05)
    assert k > 2
    cost = measured({1: 1.0, 2: 1.83, 8: 3.44})
    assert cost.ratio(5) == pytest.approx(1.83 + (3.44 - 1.83) * 3 / 6)
    assert cost.ratio(12) == pytest.approx(3.44 + (3.44 - 1.83) / 6 * 4)  # along the two largest
    assert choose(0.9, 8, cost, min_gain=1.05)[0] >= 6


def test_a_request_that_copies_well_tries_the_sizes_a_chord_prices_out():
    """Measured on Gemma-3 Q4_K_M (2 cores): 4 tokens cost 2.0 single calls, 5 cost 3.2, 9 cost 4.1 (the
    CPU multiplies in tiles of columns). Known 2, 5 and 9, the chord prices 4 at 2.2 and no draft of 3
    is sent; a drafter whose acceptance is high prices the unmeasured sizes as the largest measured one
    below them, tries 4, and then keeps the measured price."""
    cost = measured({1: 1.0, 2: 1.64, 5: 3.16, 9: 4.12})
    assert cost.ratio(4) == pytest.approx(1.64 + (3.16 - 1.64) * 2 / 3)
    assert cost.ratio(4, optimistic=True) == pytest.approx(1.64)
    assert cost.ratio(8, optimistic=True) == pytest.approx(3.16)
    assert cost.ratio(9, optimistic=True) == pytest.approx(4.12)  # a measured size keeps its price
    assert measured({1: 1.0}).ratio(5, optimistic=True) == pytest.approx(3.0)  # nothing to go by: the prior
    assert choose(0.9, 8, cost, min_gain=1.05)[0] != 3
    assert choose(0.9, 8, cost, min_gain=1.05, explore=True)[0] == 3
    # the drafter explores only from `explore_p` on
    text = list(range(10, 40))
    for p_high in (True, False):
        d = Drafter(SpecConfig(), text + text[:3])
        d.hits, d.trials = (9.0, 10.0) if p_high else (5.0, 10.0)
        draft, _ = d.draft(8, cost)
        assert (len(draft) == 3) == p_high, (d.p, draft)
    for _ in range(2):
        cost.record(4, 0.0204)
    assert cost.ratio(4, optimistic=True) == pytest.approx(2.04)


def test_a_long_match_drafts_long_with_evidence_of_its_own():
    """A suffix of `long_ngram` tokens found earlier is a verbatim copy: it proposes up to draft_max
    tokens and is priced by what long matches earned; a short match proposes at most draft_short and
    keeps its own record, so short misses do not price long copies out."""
    cfg = SpecConfig()
    stretch = list(range(100, 140))
    context = stretch + [7, 8] + stretch[:10]  # the last 10 tokens repeat the stretch's start
    d = Drafter(cfg, context)
    assert d.propose(32) == context[10 : 10 + 32] and d.long
    short = Drafter(cfg, stretch + [7, 8] + stretch[:3])  # only 3 tokens repeat
    assert short.propose(32) == stretch[3 : 3 + cfg.draft_short] and not short.long
    for _ in range(10):  # short guesses keep missing
        short.record(4, 0)
    d.hits, d.trials = short.hits, short.trials
    assert d.p < 0.2 and d.p_long == pytest.approx(0.5)
    for _ in range(5):
        d.propose(16)
        d.record(16, 16)
    assert d.p_long > 0.95 and d.p < 0.2
    flat = DecodeCost(0.1, learn=False)
    draft, _ = d.draft(cfg.draft_max, flat)
    assert len(draft) == cfg.draft_max
    short.hits, short.trials = 50.0, 50.0  # a short match at high acceptance still stops at draft_short
    assert len(short.draft(cfg.draft_max, flat)[0]) == cfg.draft_short


def test_a_size_judged_too_dear_is_tried_again_later():
    """Drafting stops when the cost says it cannot pay, and with it the calls that would measure the cost
    again: a size not called for `stale` calls is forgotten, so one slow sample is not final."""
    cost = DecodeCost(prior_slope=0.5, stale=200)
    cost.record(1, 0.010)
    for _ in range(2):
        cost.record(2, 0.050)  # a stall, or the graph of a new size: 5x a single token
    assert cost.ratio(2) == pytest.approx(5.0)
    assert choose(0.95, 8, cost, min_gain=1.05)[0] == 0  # no draft pays at that price
    for _ in range(199):
        cost.record(1, 0.010)
    assert cost.ratio(2) == pytest.approx(5.0)  # not yet stale
    for _ in range(64):
        cost.record(1, 0.010)
    assert cost.ratio(2) == pytest.approx(1.5)  # forgotten: the prior again, and a draft is tried
    assert choose(0.95, 8, cost, min_gain=1.05)[0] > 0


def test_drafter_learns_p_from_drafts_it_did_not_send():
    """A declined proposal is checked against the tokens that follow: a request that copies well earns
    drafts without paying for one, one that does not never drafts and counts as turned off."""
    costly = measured(COSTLY)
    copy = Drafter(SpecConfig(), list(range(10, 40)) + [10, 11])
    sent = []
    for t in range(12, 40):
        draft, _ = copy.draft(8, costly)
        sent.append(len(draft))
        copy.push(t)  # the model goes on copying
    assert sent[0] == 0 and max(sent) > 0 and copy.p > 0.8

    free = Drafter(SpecConfig(), [1, 2, 3, 4, 1, 2, 5, 6, 1, 2, 7, 8, 1, 2])
    for t in [9, 1, 2, 11, 1, 2, 12, 1, 2, 13, 1, 2]:  # "1 2" always proposes something that does not come
        assert free.draft(8, costly) == ([], 0.0)
        free.push(t)
    assert free.p < 0.3 and free.turned_off


# ---- the scheduler on a fake backend ---------------------------------------------------------------


# The fake model continues any token t with t + 1: it answers 8, then "6 7 8" copied from the prompt
# proposes 9 5 6 7, of which 9 is accepted and 5 rejected (the model says 10).
COPY_PROMPT = [5, 6, 7, 8, 9, 5, 6, 7]


def flat() -> DecodeCost:
    """A backend whose calls cost the same at any size: every proposal pays, drafted at full length (the
    fake's own timings are noise, so these tests fix the cost)."""
    return DecodeCost(0.0, learn=False)


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 7, 40])
def test_fake_output_and_kv_are_those_of_plain_decoding(max_tokens):
    plain_b, spec_b = FakeBatcher(), SpecFakeBatcher(draft_max=4)
    plain = Scheduler(plain_b)
    spec = Scheduler(spec_b, spec=SpecConfig(draft_max=4), cost=flat())
    try:
        want = asyncio.run(collect_text(plain, COPY_PROMPT, max_tokens=max_tokens))
        got = asyncio.run(collect_text(spec, COPY_PROMPT, max_tokens=max_tokens))
        assert got[0] == want[0] and got[1].completion_tokens == want[1].completion_tokens == max_tokens
        assert got[1].reason == want[1].reason == "length"
        # the cache holds what plain decoding's holds: rejected positions were dropped (the fake checks
        # every later position against it too)
        assert spec_b.kv[0] == plain_b.kv[0]
        assert spec.slots[0].cached == spec_b.kv[0]
        stats = spec.stats()
        if max_tokens >= 7:  # 8 from the prompt, then a draft of 9 5 6 7 of which 9 is accepted, then 10...
            assert stats["spec_accepted"] == 1 and stats["spec_drafted"] == 4
            assert spec_b.discarded > 0
        if max_tokens == 3:
            assert stats["spec_drafted"] == stats["spec_accepted"] == 1  # room for one drafted token only
        if max_tokens == 1:
            assert stats["spec_drafted"] == 0  # a draft could add nothing within max_tokens
    finally:
        plain.close()
        spec.close()


def test_a_request_that_may_not_speculate_drafts_nothing():
    spec = Scheduler(SpecFakeBatcher(draft_max=4), spec=SpecConfig(draft_max=4), cost=flat())
    try:
        want = asyncio.run(collect_text(spec, COPY_PROMPT, max_tokens=40))
        drafted = spec.stats()["spec_drafted"]
        assert drafted > 0  # the same request drafts when it may
        got = asyncio.run(collect_text(spec, COPY_PROMPT, max_tokens=40, speculate=False))
        assert got[0] == want[0] and spec.stats()["spec_drafted"] == drafted
    finally:
        spec.close()


def test_fake_drafts_stay_within_the_context():
    spec_b = SpecFakeBatcher(draft_max=4, n_ctx=16)
    spec = Scheduler(spec_b, spec=SpecConfig(draft_max=4), cost=flat())
    plain = Scheduler(FakeBatcher(n_ctx=16))
    try:
        got, fin = asyncio.run(collect_text(spec, COPY_PROMPT))
        want, _ = asyncio.run(collect_text(plain, COPY_PROMPT))
        assert got == want and fin.reason == "length"  # the fake asserts no position passes n_ctx
    finally:
        spec.close()
        plain.close()


def test_no_drafts_while_many_slots_are_busy_or_on_a_backend_that_cannot_verify():
    fb = SpecFakeBatcher(n_slots=3, draft_max=4, delay=0.002)
    sched = Scheduler(fb, spec=SpecConfig(draft_max=4, max_busy=2), cost=flat())
    prompts = [COPY_PROMPT + [i] for i in (5, 6, 7)]  # each one drafts when it runs alone

    async def together():
        return await asyncio.gather(*(collect_text(sched, p, max_tokens=12) for p in prompts))

    try:
        asyncio.run(together())
        assert sched.stats()["spec_drafted"] == 0  # three busy slots: one token each per step
        for p in prompts:
            asyncio.run(collect_text(sched, p, max_tokens=12))
        assert sched.stats()["spec_accepted"] >= 3
    finally:
        sched.close()
    plain = Scheduler(FakeBatcher(), spec=SpecConfig())
    try:
        assert plain.spec is None and "spec_drafted" not in plain.stats()
    finally:
        plain.close()


# ---- the real bundled models -------------------------------------------------------------------------

PASSAGE = (
    "The Lindqvist Museum opens at 9:00 on weekdays and at 10:30 on Saturdays. Tickets cost 12 euros for "
    "adults, 7 euros for students and nothing for children under 12. The cafe on the second floor serves "
    "soup, sandwiches and cinnamon buns until 16:00. Guided tours in English start at 11:00 and 14:00."
)
ITEMS = ["apples", "bread", "milk", "coffee beans", "tomatoes", "olive oil", "rice", "eggs"]
FREE = [
    "Write a short poem about the sea.",
    "Why is the sky blue? Answer in two sentences.",
    "Name three uses of a paperclip.",
    "Tell me a fun fact about octopuses.",
    "What should I pack for a weekend hike?",
    "Describe a sunrise over the mountains.",
    "Give me a tip for learning to cook.",
    "What is a good name for a cat?",
]
COPY = [
    f"Read this passage and repeat it word for word.\n\n{PASSAGE}",
    f"{PASSAGE}\n\nWhen do guided tours start? Quote the sentence.",
    f"{PASSAGE}\n\nWhat does a student ticket cost? Quote the passage.",
    f"{PASSAGE}\n\nExtract as JSON with keys opens_weekdays, opens_saturday, adult_price, student_price.",
    f"{PASSAGE}\n\nList every price mentioned in the passage.",
    "Repeat this list with 'milk' replaced by 'oat milk':\n" + "\n".join(f"- {i}" for i in ITEMS),
    "Repeat this list in the same order, numbered:\n" + "\n".join(f"- {i}" for i in ITEMS),
    'Fix the spelling and repeat: "The quick brwon fox jumpd over the lazy dog near the rivr bank."',
    "Copy this code unchanged:\ndef add(a, b):\n    return a + b\n\ndef mul(a, b):\n    return a * b\n",
    "Person: Ada Lovelace, born 1815 in London, mathematician.\nPerson: Alan Turing, born 1912 in London, "
    "mathematician.\nRepeat both lines as JSON objects with keys name, year, city, job.",
    f"Summarise in one sentence, reusing the passage's words.\n\n{PASSAGE}",
    f"Translate nothing; print the passage again.\n\n{PASSAGE}",
]
PROMPTS = FREE + COPY  # 20


def smol_prompt(engine, user: str) -> list[int]:
    return engine.tokenize(
        f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n", add_special=False, parse_special=True
    )


def base_prompt(engine, user: str) -> list[int]:  # Gemma-3-270M here is a base model: plain text
    return engine.tokenize(f"{user}\n\nAnswer:\n", add_special=True, parse_special=False)


async def _generate(engine, prompt, params):
    tokens, text, fin = 0, [], None
    async for ev in engine.generate(prompt, params):
        if isinstance(ev, Delta):
            text.append(ev.text)
            tokens += ev.n_tokens
        elif isinstance(ev, Finish):
            fin = ev
    assert fin is not None
    return "".join(text), fin


def _all(engine, prompts, params_of):
    """All requests at once (the slots decode them together)."""

    async def go():
        return await asyncio.gather(*(_generate(engine, p, params_of(i)) for i, p in enumerate(prompts)))

    return asyncio.run(go())


def _one_by_one(engine, prompts, params_of):
    """One request at a time. llama.cpp's logits of a row depend slightly on what else its batch holds,
    so byte-identical output is compared on requests that never share a batch with another one."""
    return [asyncio.run(_generate(engine, p, params_of(i))) for i, p in enumerate(prompts)]


# drafts in every slot at once: four requests run together and all of them draft
BATCHED = SpecConfig(max_busy=4)


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def pair(request):
    """(engine without speculation, engine with it, prompt builder) on one bundled model, one slot each."""
    path = request.getfixturevalue(f"{request.param}_path")
    build = smol_prompt if request.param == "smollm2" else base_prompt
    kw = dict(n_ctx=1024, n_parallel=1, n_threads=1)
    plain = open_engine(path, name="plain", **kw)
    spec = open_engine(path, name="spec", speculative=True, **kw)
    # identity is a property of the verify step: draft whenever a proposal exists, to exercise it most
    spec.scheduler.cost = DecodeCost(0.0, learn=False)
    yield plain, spec, build
    plain.close()
    spec.close()


def _known_divergence(request) -> None:
    """llama.cpp computes a token's logits with other CPU kernels in a multi-token batch than alone, so
    Gemma-3 Q4_K_M's greedy answers flip at near-ties (one of the 20 prompts: "a lot of stuff" / "a
    backpack full of gear"): its repacked Q4_K kernels (the "extra buffer types"), and for its Q5_0 and
    Q8_0 tensors llamafile's tinyBLAS, which ggml uses from 2 tokens on (vec_dot for one). Loaded with
    use_extra_bufts off, the logits of 8 tokens fed one by one and as one batch still differ (up to 1.0
    after a 100-token prompt). SmolLM2 (Q4_1, and a Q8_0 head whose tinyBLAS and vec_dot results
    agree here) gives identical logits below 512 KV cells; above, ggml's split-KV flash attention for a
    single query sums in another order."""
    if "gemma3" in request.node.name:
        request.applymarker(
            pytest.mark.xfail(strict=True, reason="batch-dependent CPU kernels: Q4_K repack, tinyBLAS for Q5_0/Q8_0")
        )


def test_greedy_output_is_byte_identical_on_20_prompts(pair, request):
    plain, spec, build = pair
    _known_divergence(request)
    prompts = [build(plain, p) for p in PROMPTS]
    greedy = lambda i: SamplingParams(temperature=0, max_tokens=48)  # noqa: E731
    before = spec.stats()
    want = _one_by_one(plain, prompts, greedy)
    got = _one_by_one(spec, prompts, greedy)
    for i, ((w, wf), (g, gf)) in enumerate(zip(want, got)):
        assert g == w, f"prompt {i} ({PROMPTS[i][:40]!r}) differs with speculation"
        assert (gf.reason, gf.completion_tokens) == (wf.reason, wf.completion_tokens)
    after = spec.stats()
    accepted = after["spec_accepted"] - before["spec_accepted"]
    drafted = after["spec_drafted"] - before["spec_drafted"]
    generated = after["generated_tokens"] - before["generated_tokens"]
    assert accepted >= generated // 5, (accepted, drafted, generated)  # the copy prompts were copied
    assert "spec_drafted" not in plain.stats()


def test_logprobs_and_grammar_with_speculation(pair, request):
    plain, spec, build = pair
    _known_divergence(request)
    prompt = build(plain, COPY[3])
    grammar = 'root ::= "{" [^}]* "}"'
    for params in (
        SamplingParams(temperature=0, max_tokens=40, logprobs=True, top_logprobs=2),
        SamplingParams(temperature=0, max_tokens=40, grammar=grammar),
        SamplingParams(temperature=0, max_tokens=40, repeat_penalty=1.3),
    ):
        accepted = spec.stats()["spec_accepted"]
        want = _one_by_one(plain, [prompt], lambda i: params)[0]  # noqa: B023
        got = _one_by_one(spec, [prompt], lambda i: params)[0]  # noqa: B023
        assert got[0] == want[0], params
        assert spec.stats()["spec_accepted"] > accepted, params  # drafts were accepted on this path too


def test_off_switch_engages_when_nothing_is_copied(smollm2_path):
    """With the cost learned from its own decode calls, a request with nothing to copy drafts (nearly)
    nothing and counts as turned off. Where longer calls are cheap, a copying request learns its
    acceptance from declined proposals, drafts, and many of its tokens come from drafts."""
    with open_engine(smollm2_path, name="spec", n_ctx=1024, n_threads=1, speculative=True) as engine:
        _all(engine, [smol_prompt(engine, FREE[5])], lambda i: SamplingParams(temperature=0, max_tokens=160))
        s = engine.stats()
        assert s["spec_turned_off"] == 1, s
        assert s["spec_drafted"] <= 16, s  # at most a tenth of the tokens, where a fixed rule drafted 24+
        engine.scheduler.cost = DecodeCost(0.2, learn=False)  # a machine where a longer decode is cheap
        _all(engine, [smol_prompt(engine, COPY[0])], lambda i: SamplingParams(temperature=0, max_tokens=80))
        s2 = engine.stats()
        assert s2["spec_turned_off"] == 1, s2  # the copying request kept drafting...
        assert s2["spec_accepted"] - s["spec_accepted"] >= 30, s2  # ...and many of its tokens come from drafts


def test_sampling_keeps_the_distribution(smollm2_path):
    """Temperature 1 on a prompt that ends mid-copy (drafts from the first token on). With one seed both
    engines must give the same tokens (one draw per position in the same order); over disjoint seed sets
    the first three tokens' distributions must agree (chi-square)."""
    from scipy.stats import chi2_contingency

    n = 120
    kw = dict(n_ctx=512, n_parallel=4, n_threads=1, queue_size=n)
    with (
        open_engine(smollm2_path, name="plain", **kw) as plain,
        open_engine(smollm2_path, name="spec", speculative=BATCHED, **kw) as spec,
    ):
        spec.scheduler.cost = DecodeCost(0.0, learn=False)  # drafts in every step: the rule under test is the sampler's
        text = "Tea, coffee, juice, water, milk, soda, cocoa.\nTea, coffee, juice, water, milk, soda, cocoa.\nTea,"
        prompt = plain.tokenize(text, add_special=False, parse_special=False)
        params = lambda seed: SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_tokens=6, seed=seed)  # noqa: E731
        same_seed = [_one_by_one(e, [prompt] * 6, params) for e in (plain, spec)]
        assert [t for t, _ in same_seed[0]] == [t for t, _ in same_seed[1]]
        accepted = spec.stats()["spec_accepted"]
        off = [t for t, _ in _all(plain, [prompt] * n, lambda i: params(1000 + i))]
        on = [t for t, _ in _all(spec, [prompt] * n, lambda i: params(5000 + i))]
        assert spec.stats()["spec_accepted"] - accepted >= n, "drafts must be in play for the test to mean anything"
    first = lambda t: t[:16]  # noqa: E731  about three tokens of text
    counts_off, counts_on = Counter(map(first, off)), Counter(map(first, on))
    common = [k for k in counts_off if counts_off[k] + counts_on[k] >= 10]
    table = [[counts_off[k] for k in common], [counts_on[k] for k in common]]
    table[0].append(n - sum(table[0]))  # the rare outcomes, pooled
    table[1].append(n - sum(table[1]))
    assert len(common) >= 2, counts_off  # a distribution with some spread, not one forced answer
    _, p, _, _ = chi2_contingency(table)
    assert p > 0.001, (p, table)
