"""firmware/README.md, run: every ```sh and ```python block, in order, against a temporary "USB
stick" and a temporary device root. The only changes to the commands are listed in ADAPT (test
flags and paths); a command that fails fails the test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from firmware.client import Client
from tests.support.live import CTX, start_server

REPO = Path(__file__).resolve().parents[2]
README = REPO / "firmware" / "README.md"


def blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(sh|python)\n(.*?)```", README.read_text(), flags=re.S)


def adapt(line: str, root: Path, sock: Path) -> str:
    """The test-only changes: no cross-compiling here, no real /etc, /opt or /run."""
    if "wheelhouse.sh" in line:
        line += " --dry-run"
    if "install-device.sh" in line:
        line += f' --root "{root}" --venv "{Path(sys.executable).parent.parent}"'
    return line.replace("/etc/edge/", f"{root}/etc/edge/").replace("/run/edge/edge.sock", str(sock))


@pytest.mark.slow
def test_readme_commands_run(tmp_path):
    usb, keys, root = tmp_path / "usb", tmp_path / "keys", tmp_path / "device"
    for d in (usb, keys, root):
        d.mkdir()
    device_home = root / "var" / "lib" / "edge"
    sock = tmp_path / "edge.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    env.update(
        USB=str(usb),
        KEYS=str(keys),
        EDGE_HOME=str(device_home),
        HF_HUB_OFFLINE="1",
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
        PYTHON=sys.executable,
    )
    server = None
    ran = []
    try:
        for lang, body in blocks():
            if "/run/edge/edge.sock" in body and server is None:  # the service, as the unit starts it
                server = start_server(
                    device_home, "default", "--ctx", str(CTX), "--no-tcp", "--uds", str(sock), wait=False
                )
                Client(f"unix://{sock}").wait_ready(timeout=180)
            if lang == "python":
                code = adapt(body, root, sock)
                proc = subprocess.run(
                    [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=600
                )
                assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
                ran.append("python block")
                continue
            for line in body.strip().splitlines():
                cmd = adapt(line, root, sock)
                proc = subprocess.run(
                    ["bash", "-c", cmd], capture_output=True, text=True, env=env, cwd=REPO, timeout=600
                )
                assert proc.returncode == 0, f"{line}\n-> {cmd}\n{proc.stdout}\n{proc.stderr}"
                ran.append(line)
    finally:
        if server is not None:
            server.stop()
    assert len(ran) >= 10
    assert (root / "etc" / "systemd" / "system" / "edge.service").is_file()
    assert (device_home / "current" / "models" / "smollm2-135m-q4_1.gguf").is_file()
    from firmware.bundle.installs import Installs

    installs = Installs(device_home)
    assert [s.active for s in installs.list()] == [True, False]  # provisioned, updated, rolled back to the first
