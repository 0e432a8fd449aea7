"""Load: 32 concurrent clients x 10 requests against a real `edge serve` on loopback, mixed
OpenAI/Ollama, streaming and not, one request in five abandoned mid-stream; a client answered 503
waits Retry-After and sends the same request again. Expected: nothing but 200 and 503 queue-full
(with Retry-After), every request served in the end, every stream well-formed, every slot and queue place free
afterwards, and resident memory growth under 5 % between a warm-up round and the end.

Run: .venv/bin/pytest tests/edge/server/test_load.py -q -s   (prints the figures; ~1-2 min on 2 busy cores)
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter

import httpx
import pytest

from tests.support.live import chat_messages, start_server

MODEL = "smollm2:135m-q4_1"
CLIENTS, PER_CLIENT = 32, 10
MAX_TOKENS = 4  # small: the test is about the server's bookkeeping, not generation speed
KINDS = ("openai_stream", "openai", "ollama_stream", "ollama", "abandon")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


async def one_request(http: httpx.AsyncClient, kind: str, i: int) -> str:
    """Run one request of `kind`; return "ok", "abandoned" or "busy" (503); raise on anything else."""
    text = f"Say a word about the number {i}."
    if kind.startswith("openai") or kind == "abandon":
        path = "/v1/chat/completions"
        body = {
            "model": MODEL,
            "messages": chat_messages(text),
            "max_tokens": MAX_TOKENS if kind != "abandon" else 32,
            "temperature": 0.7,
            "stream": kind != "openai",
        }
    else:
        path = "/api/chat"
        body = {
            "model": MODEL,
            "messages": chat_messages(text),
            "stream": kind == "ollama_stream",
            "options": {"num_predict": MAX_TOKENS},
        }
    async with http.stream("POST", path, json=body) as r:
        if r.status_code == 503:
            await r.aread()
            assert int(r.headers["retry-after"]) >= 1 and "busy" in r.text, r.text
            return "busy"
        assert r.status_code == 200, (r.status_code, await r.aread())
        lines = []
        async for line in r.aiter_lines():
            if line:
                lines.append(line)
            if kind == "abandon" and len(lines) >= 2:
                return "abandoned"  # leaving the `async with` closes the connection mid-stream
    check_body(kind, lines)
    return "ok"


def check_body(kind: str, lines: list[str]) -> None:
    if kind == "openai":
        reply = json.loads("".join(lines))
        assert reply["choices"][0]["finish_reason"] in ("stop", "length"), reply
    elif kind == "openai_stream":
        assert lines[-1] == "data: [DONE]", lines[-3:]
        events = [json.loads(x[6:]) for x in lines[:-1]]
        assert all("error" not in e for e in events), events
        assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    elif kind == "ollama":
        reply = json.loads("".join(lines))
        assert reply["done"] is True and "error" not in reply, reply
    else:
        objs = [json.loads(x) for x in lines]
        assert all("error" not in o for o in objs) and objs[-1]["done"] is True, objs[-2:]


async def client(url: str, n: int, seed: int, outcomes: Counter) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        for i in range(n):
            kind = rng.choice(KINDS)
            while (result := await one_request(http, kind, seed * 100 + i)) == "busy":
                outcomes[(kind, "busy")] += 1
                await asyncio.sleep(1)  # Retry-After, then the same request again, as the OpenAI SDK does
            outcomes[(kind, result)] += 1


async def crowd(url: str, clients: int, per_client: int) -> Counter:
    outcomes: Counter = Counter()
    await asyncio.gather(*(client(url, per_client, seed, outcomes) for seed in range(clients)))
    return outcomes


@pytest.fixture(scope="module")
def loaded_server(module_tmp):
    srv = start_server(module_tmp("load"), "--parallel", "4", "--queue", "16", "--ctx", "512")
    yield srv
    srv.stop()


@pytest.mark.slow
def test_32_clients_x_10_requests(loaded_server):
    srv = loaded_server
    asyncio.run(crowd(srv.url, CLIENTS, 1))  # every kind of request once: caches, pools, code paths
    rss0 = rss_kib(srv.proc.pid)
    cancelled0 = srv.metric("edge_generations_cancelled_total")
    t0 = time.perf_counter()
    outcomes = asyncio.run(crowd(srv.url, CLIENTS, PER_CLIENT))
    seconds = time.perf_counter() - t0
    deadline = time.monotonic() + 30
    while srv.metric("edge_busy_slots") or srv.metric("edge_queue_depth"):
        assert time.monotonic() < deadline, "slots or queue places still held after the load"
        time.sleep(0.1)
    rss1 = rss_kib(srv.proc.pid)
    growth = (rss1 - rss0) / rss0
    by_result: Counter = Counter()
    for (_, result), n in outcomes.items():
        by_result[result] += n
    print(
        f"\nload: {CLIENTS}x{PER_CLIENT} requests served in {seconds:.1f} s: {by_result['ok']} answered, "
        f"{by_result['abandoned']} abandoned mid-stream, {by_result['busy']} 503 queue-full answers (then retried)"
    )
    print(f"load: server RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB ({growth * 100:+.2f} %)")
    assert by_result["ok"] + by_result["abandoned"] == CLIENTS * PER_CLIENT  # every request served in the end
    assert by_result["busy"] > 0, "32 clients never filled 4 slots + 16 queue places: the load is too light"
    abandoned = sum(n for (k, r), n in outcomes.items() if r == "abandoned")
    assert abandoned > 0 and srv.metric("edge_generations_cancelled_total") >= cancelled0 + abandoned
    assert growth < 0.05
    r = httpx.post(
        srv.url + "/v1/chat/completions",
        timeout=120,
        json={
            "model": MODEL,
            "messages": chat_messages("What is the capital of France?"),
            "max_tokens": 16,
            "temperature": 0,
        },
    )
    assert r.status_code == 200 and "Paris" in r.json()["choices"][0]["message"]["content"]
    assert "Traceback" not in srv.log_text()
