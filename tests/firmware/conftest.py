"""Firmware tests: bundles and slots on real files, live servers on loopback and Unix sockets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from tests.edge.conftest import oracle  # noqa: E402,F401 - the in-process greedy oracle fixture
from tests.support.live import edge_env  # noqa: E402


def edge_cli(home: Path, *args: str, env_extra: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m edge.cli ARGS` with EDGE_HOME=home; output captured as text."""
    proc = subprocess.run(
        [sys.executable, "-m", "edge.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=edge_env(home, **(env_extra or {})),
        cwd=str(_ROOT),
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"edge {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def smollm2_bundle(tmp_path_factory, smollm2_path) -> Path:
    """A bundle of the real SmolLM2 with an alias, made by the CLI."""
    out = tmp_path_factory.mktemp("bundles") / "smollm2.tar"
    edge_cli(
        tmp_path_factory.mktemp("maker-home"),
        "bundle",
        "create",
        str(smollm2_path),
        "-o",
        str(out),
        "--alias",
        "robot=smollm2:135m-q4_1",
        "--profile",
        "rpi5-8gb",
    )
    return out
