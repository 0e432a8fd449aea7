"""Helpers for live-server tests: start `edge serve` as a real process, wait for /health, read
/metrics; run any `edge` command as a process (`edge_cli`); and the in-process greedy oracle.

Servers run with one thread: these tests check what clients see, not speed, and a 2-core CI box
shared with other jobs makes llama.cpp's spinning thread pool very slow when oversubscribed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

SYSTEM = "You are a helpful assistant."  # SmolLM2's own default system prompt derails "capital of France"
CTX = 1024
LOAD_TIMEOUT = 180.0  # seconds; loading takes ~1 s on an idle box, far more on a busy shared one
HTTP_TIMEOUT = 300.0
ROOT = Path(__file__).resolve().parents[2]  # the repository


@dataclass
class LiveServer:
    url: str
    port: int
    proc: subprocess.Popen
    home: Path
    log: Path

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=HTTP_TIMEOUT, **kw)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def metric(self, name: str, headers: dict | None = None) -> float:
        """The value of an unlabelled sample in /metrics."""
        text = httpx.get(self.url + "/metrics", headers=headers or {}, timeout=30).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in /metrics")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def edge_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    env.update({"EDGE_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env


def edge_cli(home: Path, *args: str, env_extra: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m edge.cli ARGS` with EDGE_HOME=home; output captured as text."""
    proc = subprocess.run(
        [sys.executable, "-m", "edge.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=edge_env(home, **(env_extra or {})),
        cwd=str(ROOT),
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"edge {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def start_server(home: Path, *args: str, wait: bool = True, env: dict | None = None) -> LiveServer:
    """`python -m edge.cli serve --port P ... args`, waiting until /health says 200."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = home / f"server-{port}.log"
    cmd = [sys.executable, "-m", "edge.cli", "serve", "--port", str(port), "--threads", "1", *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env or edge_env(home))
    server = LiveServer(f"http://127.0.0.1:{port}", port, proc, home, log)
    if wait:
        wait_ready(server)
    return server


def wait_ready(server: LiveServer, timeout: float = LOAD_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"edge serve exited with {server.proc.returncode}:\n{server.log_text()}")
        try:
            if httpx.get(server.url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise AssertionError(f"edge serve not ready after {timeout} s:\n{server.log_text()}")


class Oracle:
    def __init__(self, engine, template):
        self.engine, self.template = engine, template

    def chat(self, messages: list[dict], max_tokens: int) -> str:
        from edge.server.prompts import chat_prompt

        return self._greedy(chat_prompt(self.engine, self.template, messages), max_tokens)

    def complete(self, text: str, max_tokens: int) -> str:
        from edge.server.prompts import text_prompt

        return self._greedy(text_prompt(self.engine, text), max_tokens)

    def _greedy(self, ids: list[int], max_tokens: int) -> str:
        from edge.engine.base import Delta, SamplingParams

        async def run() -> str:
            out = []
            async for ev in self.engine.generate(ids, SamplingParams(temperature=0.0, max_tokens=max_tokens)):
                if isinstance(ev, Delta):
                    out.append(ev.text)
            return "".join(out)

        return asyncio.run(run())


def greedy_ids(folder: Path, prompt: list[int], n: int) -> list[int]:
    """Exactly n greedy token ids from `edge.engine` on a model file or folder, end-of-generation
    ignored (the scheduler's path; the ids are read where the sampler returns them)."""
    from edge.engine import open_engine
    from edge.engine.base import Finish, SamplingParams

    async def run() -> list[int]:
        engine = open_engine(folder, name="t", n_ctx=256, n_threads=1)
        got: list[int] = []
        orig = engine._batcher.sample
        engine._batcher.sample = lambda s, row: got.append(orig(s, row)) or got[-1]
        try:
            async for ev in engine.generate(prompt, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)):
                if isinstance(ev, Finish):
                    assert ev.completion_tokens == n
        finally:
            engine.close()
        return got[:n]

    return asyncio.run(run())


def chat_messages(question: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
