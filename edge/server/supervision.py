"""systemd's notify protocol and watchdog, without a daemon or a library.

Protocol (sd_notify(3)): datagrams of newline-separated `KEY=value` lines sent to the AF_UNIX socket
named by $NOTIFY_SOCKET; a name starting with '@' is in the abstract namespace (a leading NUL).
$WATCHDOG_USEC (and $WATCHDOG_PID, when set, must be our pid) asks for `WATCHDOG=1` at least that
often; we ping at half of it.

What edge sends:
- `STATUS=loading ...` at start, `READY=1` only after the model loaded AND a one-token greedy
  self-test produced a token (a model that loads but cannot generate never reports ready);
- `WATCHDOG=1` only while the scheduler's decode loop is alive: its `heartbeat` (monotonic
  seconds of its last iteration; an idle loop still beats every second) must be younger than
  `stale_after`. A hung decode stops the pings, and systemd restarts the service;
- `STOPPING=1` when the server starts shutting down.

Without $NOTIFY_SOCKET every call is a no-op and no self-test runs (a plain `edge serve`).

Test hook: $EDGE_TEST_HANG_FILE=PATH makes the decode loop block forever in its next decode
call once PATH exists (tests use it to prove that the pings stop). Never set it in production.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge.errors import EdgeError

STALE_MIN_S = 3.0  # an idle decode loop beats every second (edge.engine.scheduler.IDLE_WAKE_S)


class Notifier:
    """Sends sd_notify datagrams; a no-op when the process is not supervised."""

    def __init__(self, address: str | None):
        self.address = address
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, env=None) -> Notifier:
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: object) -> bool:
        """`send(READY=1, STATUS="...")`. False when unsupervised or the socket is gone."""
        address = self.address
        if address is None:
            return False
        payload = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        target = "\0" + address[1:] if address.startswith("@") else address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, target)
        except OSError:  # systemd restarting or the socket removed: nothing useful to do but retry later
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def stopping(self) -> bool:
        return self.send(STOPPING=1, STATUS="stopping")

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env=None) -> float | None:
    """Seconds systemd waits between pings ($WATCHDOG_USEC), or None when no watchdog is asked."""
    env = os.environ if env is None else env
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None  # meant for another process (e.g. our parent shell)
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


class Watchdog:
    """A thread that pings while `heartbeat()` is fresh and `stopping()` is false."""

    def __init__(
        self,
        notifier: Notifier,
        interval_s: float,
        heartbeat: Callable[[], float],
        stopping: Callable[[], bool] = lambda: False,
    ):
        self.notifier = notifier
        self.period = interval_s / 2
        self.stale_after = max(STALE_MIN_S, interval_s / 2)
        self.heartbeat = heartbeat
        self.stopping = stopping
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def alive(self) -> bool:
        return time.monotonic() - self.heartbeat() < self.stale_after

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            if self.stopping():
                self.notifier.stopping()
                return
            if self.alive():
                self.notifier.watchdog()
            else:
                self.notifier.status(
                    f"decode loop stalled for {time.monotonic() - self.heartbeat():.0f} s; watchdog pings stopped"
                )

    def stop(self) -> None:
        self._stop.set()


def self_test(engine) -> None:
    """Generate one greedy token from the model's BOS (embed one input, for an encoder); raises EdgeError
    when none comes."""
    from edge.engine.base import Delta, Finish, SamplingParams

    async def one_token() -> int:
        prompt = engine.tokenize("Hello", add_special=True) or engine.tokenize(" ", add_special=True)
        n = 0
        async for ev in engine.generate(prompt, SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)):
            if isinstance(ev, Delta):
                n += ev.n_tokens
            elif isinstance(ev, Finish):
                n = max(n, ev.completion_tokens)
        return n

    if engine.info.is_encoder:  # an embedding-only model cannot generate: one embedding proves it instead
        asyncio.run(engine.embed([engine.tokenize("Hello", add_special=True)]))
        return
    if asyncio.run(one_token()) < 1:
        raise EdgeError(
            "self-test failed: the model loaded but generated no token; check the model file "
            "(`edge run MODEL hi`) and the server log"
        )


def engine_heartbeat(engine) -> Callable[[], float]:
    """The engine's scheduler heartbeat; an engine without one counts as alive while loaded."""
    if hasattr(engine, "heartbeat"):
        return lambda: engine.heartbeat
    return time.monotonic


def install_test_hang(engine, env=None) -> None:
    """See the module doc: $EDGE_TEST_HANG_FILE blocks the decode loop once the file exists."""
    env = os.environ if env is None else env
    flag = env.get("EDGE_TEST_HANG_FILE")
    batcher = getattr(getattr(engine, "scheduler", None), "b", None)
    if not flag or batcher is None:
        return
    real_decode = batcher.decode

    def decode(entries):
        if Path(flag).exists():
            threading.Event().wait()  # hang forever, as a stuck GPU driver or kernel would
        return real_decode(entries)

    batcher.decode = decode


class Supervision:
    """What `edge serve` does for systemd: wire this into the loader's callbacks."""

    def __init__(self, env=None):
        self.env = os.environ if env is None else env
        self.notifier = Notifier.from_env(self.env)
        self.watchdog: Watchdog | None = None

    def loading(self, what: str) -> None:
        self.notifier.status(f"loading {what}")

    def loaded(self, engine, stopping: Callable[[], bool]) -> None:
        """Called in the loader thread once the engine exists. Raises when the self-test fails."""
        if not self.notifier.enabled:
            return
        install_test_hang(engine, self.env)
        self_test(engine)
        self.notifier.ready(f"serving {engine.info.name}")
        interval = watchdog_interval(self.env)
        if interval:
            self.watchdog = Watchdog(self.notifier, interval, engine_heartbeat(engine), stopping).start()

    def failed(self, exc: BaseException) -> None:
        self.notifier.status(f"failed: {getattr(exc, 'message', exc)}")

    def on_exit(self, handler: Callable, cleanup: Callable[[], object] = lambda: None) -> Callable:
        """Wrap uvicorn's signal handler: tell systemd we are stopping (and run `cleanup`) before the
        shutdown starts."""

        def handle_exit(sig, frame) -> None:
            if self.watchdog is not None:
                self.watchdog.stop()
            self.notifier.stopping()
            cleanup()
            handler(sig, frame)

        return handle_exit

    def stopped(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        self.notifier.stopping()
        self.notifier.close()
