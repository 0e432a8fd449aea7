"""firmware/kiosk: the robot bridge and the kiosk launcher, run as scripts against a live server
that listens only on a Unix socket (`edge serve --no-tcp --uds PATH`)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from firmware.client import Client
from tests.support.live import CTX, SYSTEM, edge_env, start_server

KIOSK = Path(__file__).resolve().parents[2] / "firmware" / "kiosk"


@pytest.fixture(scope="module")
def uds_only(tmp_path_factory):
    home = tmp_path_factory.mktemp("kiosk-home")
    sock = home / "edge.sock"
    srv = start_server(home, "--ctx", str(CTX), "--no-tcp", "--uds", str(sock), wait=False)
    Client(f"unix://{sock}").wait_ready(timeout=180)
    yield srv, sock
    srv.stop()
    assert not sock.exists()  # removed on shutdown


def _run(script: str, sock: Path, stdin: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(KIOSK / script), "--url", f"unix://{sock}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
        env=edge_env(sock.parent),
    )


@pytest.mark.slow
def test_no_tcp_listener(uds_only):
    srv, _ = uds_only
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", srv.port)) != 0  # --no-tcp: nothing on the port


@pytest.mark.slow
def test_robot_bridge_json_lines(uds_only):
    _, sock = uds_only
    requests = [
        {
            "id": 1,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "What is the capital of France?"},
            ],
            "max_tokens": 16,
            "temperature": 0,
        },
        {"id": "b", "prompt": "The capital of France is", "stream": True, "max_tokens": 6, "temperature": 0},
        "this is not json",
        {"id": 3},
        {"id": 4, "prompt": "x", "model": "no-such-model"},
    ]
    stdin = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in requests) + "\n"
    proc = _run("robot_bridge.py", sock, stdin)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    first = lines[0]
    assert first["id"] == 1 and first["done"] and "Paris" in first["text"]
    deltas = [x["delta"] for x in lines if x.get("id") == "b" and "delta" in x]
    final_b = next(x for x in lines if x.get("id") == "b" and x.get("done"))
    assert deltas and "".join(deltas) == final_b["text"]
    errors = [x for x in lines if "error" in x]
    assert [e["code"] for e in errors] == ["bad_json", "edge", "model_not_found"]
    assert errors[1]["id"] == 3 and "messages" in errors[1]["error"]


@pytest.mark.slow
def test_kiosk_launcher_streams_answers(uds_only):
    _, sock = uds_only
    proc = _run(
        "kiosk.py", sock, "What is the capital of France?\n\nAnd of Italy?\n", "--max-tokens", "24", "--system", SYSTEM
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("starting...\nHello!")
    assert "Paris" in proc.stdout and proc.stdout.count("> ") >= 3
