"""Detection on recorded device files (tests/profiles/fixtures/devices/*, formats in NOTES.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from edge.cli.profile import profile_command
from profiles.detect import detect
from profiles.profile import GIB

DEVICES = Path(__file__).parent / "fixtures" / "devices"

# device folder -> (profile, threads, budget GiB expected to 0.05)
EXPECTED = {
    "rpi5-8gb": ("rpi5-8gb", 4, 7.86 - 1.5),
    "rpi5-4gb-container": ("rpi5-4gb", 2, 2.0 - 0.25),  # the 2 GiB container limit wins; cpu.max 2 cores
    "jetson-orin-nano": ("jetson-orin-nano-8gb", 6, 7.27 - 3.0),
    "jetson-orin-nano-super": ("jetson-orin-nano-super", 6, 7.27 - 3.0),
    "jetson-agx-orin-64gb": ("jetson-agx-orin-64gb", 12, 61.36 - 8.0),
    "android-termux": ("android-8gb-termux", 5, 7.27 - 4.5),  # 1x X3 + 2x A715 + 2x A710; 3x A510 left out
    "macos-m2": ("apple-m2", 4, 8.0 - 3.0),
    "laptop-intel-hybrid": ("laptop-x86-avx2", 4, 15.36 - 6.0),  # 4 P-cores (8 threads) + 8 E-cores
    "server-avx512-docker-v1": ("laptop-x86-avx512", 3, 4.0 - 0.25),  # cgroup v1 limit and quota
    "rk3588-unknown-board": ("generic", 4, 15.39 - 3.0),  # 4x A76 big, 4x A55 little
}


@pytest.mark.parametrize("device", sorted(EXPECTED))
def test_recorded_device_gets_its_profile_threads_and_budget(device):
    found = detect(DEVICES / device)
    profile, threads, budget_gib = EXPECTED[device]
    assert found.profile.name == profile, found.reasons
    assert found.threads == threads, found.reasons
    assert found.budget_bytes / GIB == pytest.approx(budget_gib, abs=0.05), found.reasons


def test_every_fixture_folder_has_an_expectation():
    assert {p.name for p in DEVICES.iterdir() if p.is_dir()} == set(EXPECTED)


def test_reasons_name_the_evidence():
    jetson = detect(DEVICES / "jetson-orin-nano-super")
    assert any("L4T 36.4.3" in r for r in jetson.reasons)
    android = detect(DEVICES / "android-termux")
    assert android.facts.termux and android.facts.android_model == "SM-S911B"
    assert any("3 little cores left out" in r for r in android.reasons)
    container = detect(DEVICES / "rpi5-4gb-container")
    assert any("container memory limit 2.00 GiB" in r for r in container.reasons)


def test_empty_root_falls_back_to_generic(tmp_path):
    found = detect(tmp_path)
    assert found.profile.name == "generic"
    assert found.threads == found.profile.runtime.threads
    assert found.budget_bytes == found.profile.budget_bytes


def test_unlimited_cgroup_does_not_cap(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text("MemTotal:        8000000 kB\n")
    (tmp_path / "sys/fs/cgroup/memory").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/memory/memory.limit_in_bytes").write_text("9223372036854771712\n")
    found = detect(tmp_path)
    assert found.facts.cgroup_mem_limit is None
    assert found.facts.effective_mem_bytes == 8000000 * 1024


def test_live_detection_runs_on_this_machine():
    found = detect()
    assert found.threads >= 1 and found.budget_bytes > 0
    assert found.facts.mem_total_bytes and found.facts.mem_total_bytes > 0


def _cli():
    app = typer.Typer()
    app.command()(profile_command)
    app.command("noop", hidden=True)(lambda: None)  # two commands: typer keeps "profile" as a sub-command
    return app


def test_profile_command_json_and_text():
    runner = CliRunner()
    result = runner.invoke(_cli(), ["profile-command", "--json", "--root", str(DEVICES / "rpi5-8gb")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["profile"] == "rpi5-8gb" and data["threads"] == 4
    assert data["facts"]["device_tree_model"] == "Raspberry Pi 5 Model B Rev 1.0"
    text = runner.invoke(_cli(), ["profile-command", "--root", str(DEVICES / "jetson-orin-nano")])
    assert text.exit_code == 0
    assert "jetson-orin-nano-8gb" in text.output and "CMAKE_CUDA_ARCHITECTURES=87" in text.output
    assert "why:" in text.output
