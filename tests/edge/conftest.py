"""A real `edge serve` process on a free loopback port serving the bundled SmolLM2, and an
in-process engine on the same file as the oracle for greedy answers (helpers in live.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# `tests.support.live` is imported from the repository root (as tests/quantize/conftest.py does).
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.support.live import CTX, Oracle, start_server  # noqa: E402


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


@pytest.fixture(scope="session")
def oracle(smollm2_path):
    """The engine in this process on the same file, with one slot: the greedy answers to match."""
    from edge.chat.templates import ChatTemplate
    from edge.engine import open_engine

    engine = open_engine(smollm2_path, name="oracle", n_ctx=CTX, n_parallel=1, n_threads=1)
    info = engine.info
    template = ChatTemplate.for_model(info)
    yield Oracle(engine, template)
    engine.close()
