"""The benchmark's HTTP client: /v1/completions requests timed on the client's clock.

Every figure here is taken the way a user sees it (wall time over loopback HTTP); the server's
own timings are kept beside it when the server reports them (llama-server's `timings`).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from servers import Running

TIMEOUT = httpx.Timeout(300.0)


@dataclass
class Completion:
    seconds: float  # request sent -> full response received
    completion_tokens: int  # from usage
    prompt_tokens: int
    server_tps: float | None  # the server's own generation rate, when it reports one
    t_sent: float
    t_done: float
    text: str = ""  # the completion's text

    @property
    def wall_tps(self) -> float:
        return self.completion_tokens / self.seconds


@dataclass
class Timed:
    """One streamed completion of a pinned token count, timed on the client's clock."""

    ttft: float  # seconds from the request to the first chunk with text (prompt evaluation + 1 token)
    decode_tps: float  # (tokens - 1) / (last chunk - first chunk): generation alone
    wall_tps: float  # tokens / whole request
    tokens: int
    text: str
    server_tps: float | None = None  # the server's own generation rate, when it reports one (llama-server)


@dataclass
class StreamTiming:
    t_sent: float
    t_first: float  # first chunk carrying text or a finish reason
    t_done: float

    @property
    def ttft(self) -> float:
        return self.t_first - self.t_sent


def completion_body(run: Running, prompt: str, max_tokens: int, stream: bool) -> dict:
    """A greedy /v1/completions body for `run`, with its server kind's extra fields."""
    body = {
        "model": run.model_id or "default",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": stream,
    }
    extra = {k: min(v, max_tokens) if k == "min_tokens" else v for k, v in run.kind.extra.items()}
    return {**body, **extra}


def complete(run: Running, prompt: str, max_tokens: int = 128, client: httpx.Client | None = None) -> Completion:
    """One non-streaming completion; raises with the server's answer on any non-200."""
    own = client is None
    client = client or httpx.Client(timeout=TIMEOUT)
    try:
        t0 = time.perf_counter()
        r = client.post(run.url("/v1/completions"), json=completion_body(run, prompt, max_tokens, False))
        t1 = time.perf_counter()
    finally:
        if own:
            client.close()
    if r.status_code != 200:
        raise RuntimeError(f"{run.kind.name} answered {r.status_code}: {r.text[:500]}")
    data = r.json()
    usage = data.get("usage") or {}
    timings = data.get("timings") or {}
    return Completion(
        t1 - t0,
        int(usage.get("completion_tokens", 0)),
        int(usage.get("prompt_tokens", 0)),
        timings.get("predicted_per_second"),
        t0,
        t1,
        "".join(c.get("text") or "" for c in data.get("choices") or []),
    )


def stream_first_token(run: Running, prompt: str, max_tokens: int = 2) -> StreamTiming:
    """A streaming completion; the time its first token arrives (read to the end)."""
    t_first = None
    with httpx.Client(timeout=TIMEOUT) as client:
        t0 = time.perf_counter()
        with client.stream(
            "POST", run.url("/v1/completions"), json=completion_body(run, prompt, max_tokens, True)
        ) as r:
            if r.status_code != 200:
                raise RuntimeError(f"{run.kind.name} answered {r.status_code}: {r.read()[:500]!r}")
            for line in r.iter_lines():
                if t_first is None and _carries_token(line):
                    t_first = time.perf_counter()
        t1 = time.perf_counter()
    if t_first is None:
        raise RuntimeError(f"{run.kind.name} streamed no token for a {len(prompt)}-char prompt")
    return StreamTiming(t0, t_first, t1)


def stream_timed(run: Running, prompt: str, max_tokens: int, client: httpx.Client) -> Timed:
    """A streamed completion that must generate exactly `max_tokens` (the kind's extra fields pin the
    count; a server that stops early raises): equal work on every server, split into prompt and decode."""
    body = {**completion_body(run, prompt, max_tokens, True), "stream_options": {"include_usage": True}}
    parts, tokens, t_first, t_last, server_tps = [], 0, 0.0, 0.0, None
    t0 = time.perf_counter()
    with client.stream("POST", run.url("/v1/completions"), json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{run.kind.name} answered {r.status_code}: {r.read()[:500]!r}")
        for line in r.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            data = json.loads(line[5:])
            text = "".join(c.get("text") or "" for c in data.get("choices") or [])
            if text:
                t_last = time.perf_counter()
                t_first = t_first or t_last
                parts.append(text)
            if data.get("usage"):
                tokens = int(data["usage"].get("completion_tokens", 0))
            if data.get("timings"):
                server_tps = data["timings"].get("predicted_per_second")
    t1 = time.perf_counter()
    if tokens != max_tokens:
        raise RuntimeError(f"{run.kind.name} generated {tokens} tokens, not {max_tokens}: equal work failed")
    decode = (tokens - 1) / max(t_last - t_first, 1e-9)
    return Timed(t_first - t0, decode, tokens / (t1 - t0), tokens, "".join(parts), server_tps)


def _carries_token(line: str) -> bool:
    if not line.startswith("data:") or line.strip() == "data: [DONE]":
        return False
    try:
        choices = json.loads(line[5:]).get("choices") or []
    except json.JSONDecodeError:
        return False
    return any(c.get("text") or c.get("finish_reason") for c in choices)


def concurrent(run: Running, prompts: list[str], max_tokens: int = 128) -> tuple[float, list[Completion]]:
    """All prompts at once, one client each; aggregate tokens/s over the whole wave."""
    clients = [httpx.Client(timeout=TIMEOUT) for _ in prompts]
    try:
        with ThreadPoolExecutor(len(prompts)) as pool:
            done = list(pool.map(lambda pc: complete(run, pc[0], max_tokens, pc[1]), zip(prompts, clients)))
    finally:
        for c in clients:
            c.close()
    span = max(c.t_done for c in done) - min(c.t_sent for c in done)
    return sum(c.completion_tokens for c in done) / span, done
