"""Offline proof: the server runs in a network namespace that has only loopback (`unshare -n`,
`ip link set lo up`) and completes a chat and a stream there, with the real openai SDK."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.support.live import LOAD_TIMEOUT, edge_env

pytestmark = [pytest.mark.slow, pytest.mark.netns]

INSIDE = textwrap.dedent("""
    import json, socket, subprocess, sys, time
    import httpx, openai

    # 1. nothing but loopback: the outside world is unreachable from here
    try:
        socket.create_connection(("1.1.1.1", 443), timeout=3)
        outside = "reachable"
    except OSError as e:
        outside = f"unreachable ({e.strerror or e})"

    # 2. the server, as a user starts it
    srv = subprocess.Popen([sys.executable, "-m", "edge.cli", "serve", "--port", "11434", "--threads", "1",
                            "--ctx", "512"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + float(sys.argv[1])
        while True:
            assert srv.poll() is None, srv.stderr.read().decode()
            try:
                if httpx.get("http://127.0.0.1:11434/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "not ready"
            time.sleep(0.1)
        client = openai.OpenAI(base_url="http://localhost:11434/v1", api_key="none", max_retries=0, timeout=300)
        messages = [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "What is the capital of France?"}]
        chat = client.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=24)
        stream = client.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=24,
                                                stream=True)
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        print(json.dumps({"outside": outside, "chat": chat.choices[0].message.content, "stream": streamed}))
    finally:
        srv.terminate()
        srv.wait(timeout=30)
""")


def _netns_available() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip is not installed"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace here ({probe.stderr.strip() or 'needs root'})"
    return None


def test_chat_and_stream_inside_a_loopback_only_namespace(tmp_path):
    reason = _netns_available()
    if reason and os.environ.get("CI"):
        pytest.fail(f"the offline proof must run in CI: {reason}")
    if reason:
        pytest.skip(reason)
    script = tmp_path / "inside.py"
    script.write_text(INSIDE)
    cmd = [
        "unshare",
        "-n",
        "sh",
        "-c",
        'ip link set lo up && exec "$0" "$1" "$2"',
        sys.executable,
        str(script),
        str(LOAD_TIMEOUT),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=LOAD_TIMEOUT + 300, env=edge_env(tmp_path))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["outside"].startswith("unreachable")
    assert "Paris" in out["chat"]
    assert out["stream"] == out["chat"]
