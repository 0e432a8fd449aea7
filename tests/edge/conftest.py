"""A real `edge serve` process on a free loopback port serving the bundled SmolLM2 (helpers in
tests/support/live.py; the in-process `oracle` fixture is in tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.live import CTX, start_server


@pytest.fixture(scope="session")
def edge_home(tmp_path_factory) -> Path:
    """An EDGE_HOME with an alias, so the classic Ollama example's model name works."""
    home = tmp_path_factory.mktemp("edge-home")
    (home / "aliases.toml").write_text('"llama3.1:8b" = "smollm2:135m-q4_1"\n')
    return home


@pytest.fixture(scope="session")
def server(edge_home):
    """The default model (no MODEL argument: the bundled SmolLM2) with 4 slots."""
    srv = start_server(edge_home, "--parallel", "4", "--ctx", str(CTX))
    yield srv
    srv.stop()
