"""Faults: a server killed with SIGKILL mid-stream comes back under its supervisor and answers,
with no model file or store entry damaged; /health answers while a ~2000-token prompt is evaluated.

The supervisor is a small loop emulating the firmware's systemd unit (firmware/systemd/edge.service):
`Restart=on-failure` (a non-zero exit or a signal restarts; exit 0 and the "clean" signals SIGHUP,
SIGINT, SIGTERM and SIGPIPE do not: uvicorn re-raises SIGTERM after its graceful shutdown), `RestartSec=2`, and
`StartLimitBurst=5` starts at most. Readiness is /health answering 200 (the unit waits for READY=1,
sent after the same load; see edge.server.supervision).
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.live import LiveServer, chat_messages, edge_env, free_port, start_server

MODEL = "smollm2:135m-q4_1"
RESTART_SEC = 2.0  # the unit's RestartSec
START_LIMIT_BURST = 5
CLEAN_EXITS = {0, -signal.SIGHUP, -signal.SIGINT, -signal.SIGTERM, -signal.SIGPIPE}  # systemd's defaults


class Supervisor:
    """Restart=on-failure for one `edge serve` command, in a thread."""

    def __init__(self, cmd: list[str], env: dict, log: Path):
        self.cmd, self.env, self.log = cmd, env, log
        self.proc: subprocess.Popen | None = None
        self.exits: list[int] = []
        self.starts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set() and self.starts < START_LIMIT_BURST:
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env)
            self.starts += 1
            code = self.proc.wait()
            self.exits.append(code)
            if code in CLEAN_EXITS or self._stop.is_set():
                return
            self._stop.wait(RESTART_SEC)

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._thread.join(30)


def digests(*roots: Path) -> dict[str, str]:
    """sha256 of every file under the roots (model files and the store's own files), logs and
    edge's cache/ (derived facts such as edge.formats.filecache's, rewritten by design) excepted."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*") if root.is_dir() else [root]):
            derived = root.is_dir() and p.relative_to(root).parts[:1] == ("cache",)
            if p.is_file() and p.suffix != ".log" and not derived:
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.slow
def test_sigkill_mid_stream_then_the_supervisor_restarts_it(tmp_path, smollm2_path):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "aliases.toml").write_text(f'"default" = "{MODEL}"\n')
    port = free_port()
    before = digests(home, smollm2_path)
    cmd = [sys.executable, "-m", "edge.cli", "serve", "default", "--port", str(port), "--threads", "1", "--ctx", "1024"]
    sup = Supervisor(cmd, edge_env(home), tmp_path / "supervised.log").start()
    server = LiveServer(f"http://127.0.0.1:{port}", port, None, home, tmp_path / "supervised.log")  # type: ignore[arg-type]
    try:
        _wait_health(server.url, sup)
        first_pid = sup.proc.pid
        body = {
            "model": "default",
            "messages": chat_messages("Write a very long story about a cat."),
            "max_tokens": 800,
            "stream": True,
        }
        got = []
        with pytest.raises(httpx.HTTPError):  # the stream breaks: the server died under it
            with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    got.append(line)
                    if len(got) == 6:
                        sup.proc.send_signal(signal.SIGKILL)
        assert len(got) >= 6 and got[-1] != "data: [DONE]"
        _wait_health(server.url, sup)
        assert sup.exits[0] == -signal.SIGKILL and sup.proc.pid != first_pid and sup.starts == 2
        r = httpx.post(
            server.url + "/v1/chat/completions",
            timeout=120,
            json={
                "model": "default",
                "messages": chat_messages("What is the capital of France?"),
                "max_tokens": 16,
                "temperature": 0,
            },
        )
        assert r.status_code == 200 and "Paris" in r.json()["choices"][0]["message"]["content"]
    finally:
        sup.stop()
    assert sup.exits[-1] in CLEAN_EXITS and sup.starts == 2, f"SIGTERM must be a clean stop: {sup.exits}"
    assert digests(home, smollm2_path) == before, "a model file or a store entry changed"


def _wait_health(url: str, sup: Supervisor, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert sup.starts < START_LIMIT_BURST or (sup.proc and sup.proc.poll() is None), "start limit hit"
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the supervised server did not answer within {timeout} s")


@pytest.mark.slow
def test_health_answers_while_a_long_prompt_is_evaluated(tmp_path):
    """The decode thread evaluates the prompt in n_batch chunks with the GIL released; /health only
    reads counters, so it answers in milliseconds while ~2000 prompt tokens are evaluated."""
    srv = start_server(tmp_path / "home", "--parallel", "1", "--ctx", "4096")
    try:
        words = " ".join(f"item{i}" for i in range(520))  # ~2000 tokens with SmolLM2's vocabulary
        body = {"model": MODEL, "prompt": f"List: {words}\nThe last item is", "max_tokens": 1, "temperature": 0}
        result = {}

        def long_request():
            t = time.perf_counter()
            result["r"] = httpx.post(srv.url + "/v1/completions", json=body, timeout=300)
            result["t"] = (t, time.perf_counter())

        worker = threading.Thread(target=long_request)
        worker.start()
        latencies, busy_seen = [], False
        while worker.is_alive():
            t = time.perf_counter()
            h = httpx.get(srv.url + "/health", timeout=30)
            latencies.append((t, time.perf_counter() - t))
            busy_seen |= h.json().get("busy", 0) == 1
            time.sleep(0.02)
        worker.join()
        r, (t_start, t_end) = result["r"], result["t"]
        assert r.status_code == 200, r.text
        n_prompt = r.json()["usage"]["prompt_tokens"]
        during = [lat for t, lat in latencies if t_start + 0.2 < t < t_end - 0.2]
        print(
            f"\nhealth: {n_prompt}-token prompt took {t_end - t_start:.2f} s; {len(during)} /health calls during it, "
            f"slowest {max(during) * 1000:.0f} ms, median {sorted(during)[len(during) // 2] * 1000:.0f} ms"
        )
        assert 1800 <= n_prompt <= 2400
        assert busy_seen and len(during) >= 3, "the prompt finished before /health could be asked during it"
        assert max(during) < max(0.5, (t_end - t_start) / 4), "/health waited for the prompt"
    finally:
        srv.stop()
