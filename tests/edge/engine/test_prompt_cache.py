"""The prompt cache beyond the slots: restore, LRU budget, persistence, and refusal of bad files.

The scheduler tests run on a fake backend whose "KV state" is its token list (so a wrong restore
breaks the fake's position checks); the last tests run the real bundled models and compare greedy
output of a restored state with a fresh evaluation.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path

import pytest

from edge.engine.base import Delta, Finish, SamplingParams
from edge.engine.prompt_cache import MAGIC, PromptCache
from edge.engine.scheduler import GenerationStream, Scheduler
from tests.support.fake_backend import FakeBatcher, StatefulFakeBatcher

MIN = 8  # min_tokens of the caches made here


def run(sched, prompt, max_tokens=3):
    async def go():
        stream = GenerationStream(sched, sched.submit(prompt, SamplingParams(temperature=0, max_tokens=max_tokens)))
        text = ""
        async for ev in stream:
            if isinstance(ev, Delta):
                text += ev.text
            elif isinstance(ev, Finish):
                return text, ev
        raise AssertionError("no Finish")

    return asyncio.run(go())


@pytest.fixture
def sched_with_cache():
    made = []

    def factory(budget=1 << 20, directory=None, digest="m1", n_slots=1):
        fb = StatefulFakeBatcher(n_slots=n_slots, n_ctx=512, n_batch=64)
        cache = PromptCache(budget, directory=directory, model_digest=lambda: digest, min_tokens=MIN)
        sched = Scheduler(fb, prompt_cache=cache)
        made.append(sched)
        return fb, sched, cache

    yield factory
    for s in made:
        s.close()


def prompt(tag: int, n: int = 40) -> list[int]:
    return [tag * 1000 + i + 1 for i in range(n)]


def test_alternating_prompts_restore_instead_of_evaluating(sched_with_cache):
    fb, sched, cache = sched_with_cache()
    a, b = prompt(1), prompt(2)
    first_a, fin = run(sched, a)
    assert fin.cached_tokens == 0
    run(sched, b)  # takes the only slot: a's state must survive in the cache
    again_a, fin = run(sched, a)
    assert again_a == first_a
    assert fin.cached_tokens == len(a) - 1, "only the last prompt token is evaluated"
    assert fb.loads == 1
    stats = sched.stats()
    assert stats["hits"] == 1 and stats["tokens_restored"] == len(a) - 1 and stats["cache_entries"] == 2


def test_short_prompts_are_not_kept(sched_with_cache):
    fb, sched, cache = sched_with_cache()
    run(sched, prompt(1, n=MIN - 4), max_tokens=1)
    run(sched, prompt(2, n=MIN - 4), max_tokens=1)
    assert sched.stats()["cache_entries"] == 0 and fb.loads == 0


def test_budget_evicts_least_recently_used(sched_with_cache):
    fb, sched, cache = sched_with_cache()
    size = len(json.dumps(prompt(1) + [0, 0]).encode())
    cache.budget = 2 * size + size // 2  # two states fit, not three
    for tag in (1, 2, 3):
        run(sched, prompt(tag))
    assert sched.stats()["evictions"] >= 1
    held = {e.tokens[0] // 1000 for e in cache.entries.values()}
    assert 1 not in held and {2, 3} <= held
    assert sched.stats()["cache_bytes"] <= cache.budget


def test_a_conversation_keeps_one_entry(sched_with_cache):
    _, sched, cache = sched_with_cache()
    turn = prompt(1)
    for _ in range(3):
        text, fin = run(sched, turn)
        turn = turn + [fin.completion_tokens] + prompt(5, n=MIN + 2)  # the next turn extends this one
    run(sched, prompt(2))  # another prompt takes the slot
    firsts = sorted(e.tokens[0] // 1000 for e in cache.entries.values())
    assert firsts.count(1) == 1, f"entries {firsts}: the turns of one conversation replace each other"


def test_entries_survive_a_restart(sched_with_cache, tmp_path):
    fb, sched, cache = sched_with_cache(directory=tmp_path)
    a, b = prompt(1), prompt(2)
    text_a, _ = run(sched, a)
    run(sched, b)
    sched.close()  # flushes the disk writer
    files = list((tmp_path / "m1").glob("*.kv"))
    assert len(files) == 2

    fb2, sched2, _ = sched_with_cache(directory=tmp_path)
    cache2 = sched2.cache
    assert cache2._preloaded.wait(5)
    # both states were read (and verified) in the background before any request: a restart's first
    # question restores from memory
    assert sched2.stats()["disk_loads"] == 2 and all(e.state is not None for e in cache2.entries.values())
    again, fin = run(sched2, a)
    assert again == text_a and fin.cached_tokens == len(a) - 1 and fb2.loads == 1
    assert sched2.stats()["disk_loads"] == 2


def test_a_restart_preloads_the_newest_states_the_budget_holds(sched_with_cache, tmp_path):
    _, sched, _ = sched_with_cache(directory=tmp_path)
    for tag in (1, 2, 3):
        run(sched, prompt(tag))
    sched.close()
    for age, tag in enumerate((3, 2, 1)):  # file times: 1 the oldest
        (f,) = [f for f in (tmp_path / "m1").glob("*.kv") if f'"tokens": [{tag}001,' in f.read_bytes()[:200].decode()]
        os.utime(f, (1e9 - age, 1e9 - age))
    size = len(json.dumps(prompt(1) + [0, 0]).encode())
    _, sched2, _ = sched_with_cache(directory=tmp_path, budget=2 * size + size // 2)  # two states fit, not three
    assert sched2.cache._preloaded.wait(5)
    held = {e.tokens[0] // 1000 for e in sched2.cache.entries.values() if e.state is not None}
    assert held == {2, 3} and sched2.stats()["disk_loads"] == 2  # the oldest stays on disk
    _, fin = run(sched2, prompt(1))  # and is read when asked for
    assert fin.cached_tokens == len(prompt(1)) - 1 and sched2.stats()["disk_loads"] == 3


def test_foreign_truncated_and_tampered_files_are_ignored(sched_with_cache, tmp_path, caplog):
    _, sched, _ = sched_with_cache(directory=tmp_path)
    for tag in (1, 2, 3):
        run(sched, prompt(tag))
    sched.close()
    files = sorted((tmp_path / "m1").glob("*.kv"), key=lambda p: p.stat().st_mtime)
    assert len(files) == 3
    # truncated, tampered (one state byte flipped), and a file of another model moved in
    files[0].write_bytes(files[0].read_bytes()[:-3])
    data = bytearray(files[1].read_bytes())
    data[-2] ^= 0xFF
    files[1].write_bytes(bytes(data))
    other = tmp_path / "m2"
    other.mkdir()
    files[2].rename(other / files[2].name)
    (other / files[2].name).rename(tmp_path / "m1" / ("0" * 32 + ".kv"))
    # the moved file names model m1's digest in its header: it stays valid; make it claim another model
    moved = tmp_path / "m1" / ("0" * 32 + ".kv")
    raw = moved.read_bytes()
    moved.write_bytes(raw.replace(b'"model": "m1"', b'"model": "m9"'))
    (tmp_path / "m1" / "junk.kv").write_bytes(b"not a cache file at all")

    fb2, sched2, _ = sched_with_cache(directory=tmp_path)
    sched2.cache._preloaded.wait(5)
    for tag in (1, 2, 3):
        _, fin = run(sched2, prompt(tag))
        assert fin.cached_tokens == 0, "no damaged or foreign state may be restored"
    assert fb2.loads == 0
    assert sched2.stats()["disk_rejected"] >= 4
    assert "prompt cache: ignoring" in caplog.text


def test_disabled_cache_and_backends_without_state(sched_with_cache):
    fb = FakeBatcher(n_slots=1)  # no save_state/load_state (e.g. the ONNX backend)
    sched = Scheduler(fb, prompt_cache=PromptCache(1 << 20, min_tokens=MIN))
    try:
        assert sched.cache is None
        run(sched, prompt(1))
        assert "hits" not in sched.stats()
    finally:
        sched.close()
    assert PromptCache(0).enabled is False


def test_file_format_starts_with_magic(sched_with_cache, tmp_path):
    _, sched, _ = sched_with_cache(directory=tmp_path)
    run(sched, prompt(1))
    sched.close()
    (f,) = (tmp_path / "m1").glob("*.kv")
    assert f.read_bytes().startswith(MAGIC)


# ---- the real models ------------------------------------------------------------------------------

KIOSK_MODES = ("museum guide", "ticket desk", "cafe menu")


def _system(topic: str) -> str:
    rules = " ".join(f"Rule {j} of the {topic}: answer item {j} kindly and briefly." for j in range(24))
    return f"You are the {topic} of the city kiosk. {rules}\nQuestion: where is the exit?\nAnswer:"


async def _greedy(engine, tokens, n=24):
    text, fin = "", None
    async for ev in engine.generate(tokens, SamplingParams(temperature=0.0, max_tokens=n)):
        if isinstance(ev, Delta):
            text += ev.text
        else:
            fin = ev
    return text, fin


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smollm2_path", "gemma3_path"])
def test_restored_state_gives_the_same_greedy_output(model, request):
    """A restored state is exactly the KV the slot would have kept: the greedy answer equals the one a
    slot that still holds the prompt gives (llama.cpp's logits depend on how a prompt was batched, so
    the reference evaluates the last prompt token alone too, as every reuse does)."""
    from edge.engine import open_engine

    path = request.getfixturevalue(model)
    with tempfile.TemporaryDirectory() as cache_dir:

        def engine(cache_ram):
            return open_engine(
                path, name="m", n_ctx=2048, n_threads=2, cache_ram_bytes=cache_ram, cache_dir=Path(cache_dir)
            )

        async def twice(eng, p):
            await _greedy(eng, p)
            return await _greedy(eng, p)  # the slot keeps the prompt: only its last token is evaluated

        with engine(0) as plain:
            prompts = [plain.tokenize(_system(t)) for t in KIOSK_MODES]
            reference = []
            for p in prompts:
                text, fin = asyncio.run(twice(plain, p))
                assert fin.cached_tokens == len(p) - 1
                reference.append(text)

        async def visits(eng):
            return [await _greedy(eng, p) for _ in range(2) for p in prompts]

        with engine(256 << 20) as cached:
            results = asyncio.run(visits(cached))
            stats = cached.stats()
        for i, (text, fin) in enumerate(results[len(prompts) :]):
            assert fin.cached_tokens == fin.prompt_tokens - 1, f"mode {i}: the cached prompt was evaluated again"
            assert text == reference[i], f"mode {i}: the restored state answers differently"
        assert stats["hits"] == len(prompts) and stats["tokens_restored"] == sum(len(p) - 1 for p in prompts)

        # a restart: the first visit restores from disk, and answers the same
        with engine(256 << 20) as restarted:
            assert restarted.scheduler.cache._preloaded.wait(30)
            loads = restarted.stats()["disk_loads"]
            assert loads >= len(prompts)  # read from disk, in the background, before the question
            text, fin = asyncio.run(_greedy(restarted, prompts[0]))
            assert text == reference[0] and fin.cached_tokens == fin.prompt_tokens - 1
            assert restarted.stats()["disk_loads"] == loads and restarted.stats()["hits"] == 1
