"""Firmware tests: a bundle of the real SmolLM2 made by the CLI (`edge_cli` is in tests/support/live.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.live import edge_cli


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
