"""Power loss during `edge bundle install`: SIGKILL the installer at every phase (firmware.bundle.installs.PHASES,
through the $EDGE_BUNDLE_KILL_AT hook) and check the active slot is whole and still serves."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from edge.store import ModelStore
from firmware.bundle.installs import PHASES, Installs
from tests.support.live import edge_cli

SWITCHED = PHASES.index("switched")  # from this phase on the new slot is the active one


@pytest.fixture(scope="session")
def first_home(tmp_path_factory, smollm2_bundle) -> Path:
    home = tmp_path_factory.mktemp("power") / "home"
    edge_cli(home, "bundle", "install", smollm2_bundle)
    return home


@pytest.fixture(scope="session")
def second_bundle(tmp_path_factory, smollm2_path) -> Path:
    out = tmp_path_factory.mktemp("bundle2") / "update.tar"
    edge_cli(
        tmp_path_factory.mktemp("maker"),
        "bundle",
        "create",
        smollm2_path,
        "-o",
        out,
        "--alias",
        "update=smollm2:135m-q4_1",
    )
    return out


@pytest.mark.slow
@pytest.mark.parametrize("phase", PHASES)
def test_sigkill_at_every_phase_leaves_a_whole_active_slot(tmp_path, first_home, second_bundle, phase):
    home = tmp_path / "home"
    shutil.copytree(first_home, home, symlinks=True, copy_function=os.link)  # slot files are never written in place
    old = Installs(home).active_id()

    killed = edge_cli(home, "bundle", "install", second_bundle, env_extra={"EDGE_BUNDLE_KILL_AT": phase}, check=False)
    assert killed.returncode == -signal.SIGKILL, f"the installer did not reach phase {phase}: {killed.stderr}"

    installs = Installs(home)
    active = installs.active_id()
    assert installs.whole(installs.dir / active, hashes=True)
    expected_new = PHASES.index(phase) >= SWITCHED
    assert (active != old) == expected_new, f"after a kill at {phase} the active slot is {active} (old {old})"
    store = ModelStore(home)
    assert store.resolve("default").name == "smollm2:135m-q4_1"
    assert ("update:latest" in store.aliases()) == expected_new

    # the next install cleans what the killed one left and succeeds
    edge_cli(home, "bundle", "install", second_bundle)
    assert not [p for p in installs.dir.iterdir() if p.name.startswith(".")]
    assert not (home / ".current.new").exists()
    assert installs.whole(installs.dir / installs.active_id(), hashes=True)
    assert "update:latest" in ModelStore(home).aliases()
