"""systemd notify protocol: a fake NOTIFY_SOCKET (a datagram socket this test binds) sees READY after
the model loaded, WATCHDOG pings while the decode loop beats, no pings once it hangs, STOPPING on
SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from edge.server.supervision import Notifier, Watchdog, watchdog_interval
from tests.support.live import CTX, edge_env, free_port


class FakeSystemd:
    """Binds NOTIFY_SOCKET and collects every datagram as (monotonic time, {key: value})."""

    def __init__(self, address: str):
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def wait_for(self, key: str, timeout: float = 180.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = next((t for t, m in self.messages if key in m), None)
            if hit is not None:
                return hit
            time.sleep(0.05)
        raise AssertionError(f"no {key} within {timeout} s; got {self.messages}")

    def times(self, key: str, since: float = 0.0) -> list[float]:
        return [t for t, m in self.messages if key in m and t >= since]

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.mark.parametrize("abstract", [False, True])
def test_notifier_sends_datagrams(tmp_path, abstract):
    address = f"@edge-test-{os.getpid()}-{time.monotonic_ns()}" if abstract else str(tmp_path / "notify")
    fake = FakeSystemd(address)
    try:
        n = Notifier(address)
        assert n.ready("serving x") and n.watchdog() and n.stopping()
        fake.wait_for("STOPPING", timeout=10)
        assert [m for _, m in fake.messages] == [
            {"READY": "1", "STATUS": "serving x"},
            {"WATCHDOG": "1"},
            {"STOPPING": "1", "STATUS": "stopping"},
        ]
    finally:
        fake.close()
    assert not Notifier(None).ready("x")  # unsupervised: a no-op


def test_watchdog_interval_honours_usec_and_pid():
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None  # for another process
    assert watchdog_interval({}) is None and watchdog_interval({"WATCHDOG_USEC": "x"}) is None


def test_watchdog_pings_only_while_the_heartbeat_is_fresh(tmp_path):
    fake = FakeSystemd(str(tmp_path / "notify"))
    beat = [time.monotonic()]
    dog = Watchdog(Notifier(fake.address), 0.2, heartbeat=lambda: beat[0]).start()
    try:
        while len(fake.times("WATCHDOG")) < 3:  # fresh: pings
            beat[0] = time.monotonic()
            time.sleep(0.05)
        beat[0] = time.monotonic() - 3600  # the loop stopped beating an hour ago
        fake.wait_for("STATUS", timeout=30)  # "decode loop stalled ..."
        stalled = time.monotonic()
        time.sleep(1.0)  # five ping periods
        assert fake.times("WATCHDOG", since=stalled) == []
        assert "stalled" in next(m["STATUS"] for _, m in fake.messages if "STATUS" in m)
    finally:
        dog.stop()
        fake.close()


def _serve(tmp_path: Path, fake: FakeSystemd, **env: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "edge.cli",
        "serve",
        "smollm2",
        "--port",
        str(port),
        "--threads",
        "1",
        "--ctx",
        str(CTX),
    ]
    full_env = edge_env(tmp_path / "home", NOTIFY_SOCKET=fake.address, **env)
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    return proc, port


@pytest.mark.slow
def test_live_server_ready_watchdog_and_stopping(tmp_path):
    fake = FakeSystemd("@edge-live-" + str(time.monotonic_ns()))
    proc, port = _serve(tmp_path, fake, WATCHDOG_USEC="1000000")
    try:
        ready = fake.wait_for("READY")
        first = fake.messages[0][1]
        assert first.get("STATUS", "").startswith("loading") and "READY" not in first  # READY only after the load
        assert next(m for _, m in fake.messages if "READY" in m)["STATUS"] == "serving smollm2:135m-q4_1"
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).status_code == 200
        while len(fake.times("WATCHDOG", since=ready)) < 3:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM; systemd counts it clean
        stop = fake.wait_for("STOPPING", timeout=10)
        assert stop > ready
    finally:
        if proc.poll() is None:
            proc.kill()
        fake.close()


@pytest.mark.slow
def test_pings_stop_when_the_decode_loop_hangs(tmp_path):
    fake = FakeSystemd(str(tmp_path / "notify"))
    hang = tmp_path / "hang-now"
    proc, port = _serve(tmp_path, fake, WATCHDOG_USEC="1000000", EDGE_TEST_HANG_FILE=str(hang))
    try:
        ready = fake.wait_for("READY")  # the self-test decoded a token: the hook is armed, not yet fired
        while len(fake.times("WATCHDOG", since=ready)) < 3:
            time.sleep(0.1)
        hang.touch()
        request = threading.Thread(target=lambda: _post_quietly(port), daemon=True)
        request.start()  # its decode call blocks forever
        deadline = time.monotonic() + 60
        while not any("stalled" in m.get("STATUS", "") for _, m in fake.messages):
            assert time.monotonic() < deadline, f"no stall reported: {fake.messages[-5:]}"
            time.sleep(0.1)
        stalled = time.monotonic()
        time.sleep(3.0)  # six ping periods of the 1 s watchdog
        assert fake.times("WATCHDOG", since=stalled) == [], "pings continued while the decode loop hung"
        assert proc.poll() is None  # hung, not crashed: systemd's watchdog is what ends it
    finally:
        proc.kill()
        proc.wait(timeout=30)
        fake.close()


def _post_quietly(port: int) -> None:
    try:
        httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "Hello", "max_tokens": 4}, timeout=60)
    except httpx.HTTPError:
        pass
