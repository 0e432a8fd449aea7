"""Session caches for the tiny architecture checkpoints and their GGUF conversions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Callable[[str], Path]:
    """kind -> folder of a tiny random HF checkpoint (built once per session)."""
    from tests.support.checkpoints import make_checkpoint

    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = make_checkpoint(kind, tmp_path_factory.mktemp(f"hf-{kind}"))
        return cache[kind]

    return get


@pytest.fixture(scope="session")
def tiny_gguf(tiny_checkpoint, tmp_path_factory) -> Callable[[str, str], Path]:
    """(kind, type) -> GGUF converted by edge-quantize from the tiny checkpoint (F32 and F16 made together)."""
    from quantize.convert import convert

    cache: dict[tuple[str, str], Path] = {}

    def get(kind: str, qtype: str) -> Path:
        if (kind, qtype) not in cache:
            out = tmp_path_factory.mktemp(f"gguf-{kind}")
            results = convert(tiny_checkpoint(kind), ["f32", "f16"], out, quiet=True, name=kind)
            for r in results:
                cache[(kind, r.type.lower())] = Path(r.path)
        return cache[(kind, qtype)]

    return get
