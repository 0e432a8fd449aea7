"""firmware/systemd: every unit passes `systemd-analyze verify`; the generator puts each profile's
memory budget into MemoryMax; the unit's sandboxing and hardening options are there."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from profiles.profile import list_profiles

SYSTEMD = Path(__file__).resolve().parents[2] / "firmware" / "systemd"
sys.path.insert(0, str(SYSTEMD))

import make_unit  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


def _verify(unit: Path) -> None:
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and not proc.stderr.strip(), f"{unit.name}: {proc.stdout}{proc.stderr}"


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.parametrize("unit", sorted(SYSTEMD.glob("*.service")), ids=lambda p: p.name)
def test_shipped_units_verify(unit):
    _verify(unit)


def test_shipped_unit_is_the_generators_output():
    assert (SYSTEMD / "edge.service").read_text() == make_unit.render("generic")


@pytest.mark.parametrize("profile", list_profiles(), ids=lambda p: p.name)
def test_generated_unit_per_profile(tmp_path, profile):
    unit = tmp_path / "edge.service"
    assert make_unit.main(["--profile", profile.name, "-o", str(unit)]) == 0
    _verify(unit)
    d = _directives(unit.read_text())
    assert d["MemoryMax"] == [f"{int(profile.memory.budget_gib * 1024)}M"]
    assert d["ExecStart"] == [f"/usr/bin/env edge serve default --profile {profile.name} --uds /run/edge/edge.sock"]
    assert d["PrivateDevices"] == ["no" if profile.gpu.kind == "cuda" else "yes"]


def test_hardening():
    d = _directives((SYSTEMD / "edge.service").read_text())
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "User": "edge",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "IPAddressDeny": "any",
        "IPAddressAllow": "localhost",
        "ReadOnlyPaths": "/var/lib/edge",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
        "RuntimeDirectory": "edge",
    }
    for key, value in expected.items():
        assert d.get(key) == [value], f"{key}={d.get(key)} (want {value})"
    assert int(d["WatchdogSec"][0]) >= 10  # idle loops beat every second; a decode step may take a few
    assert "EDGE_HOME=/var/lib/edge" in d["Environment"]


@pytest.mark.parametrize("unit, most", [("edge.service", 2.0), ("edge-install@.service", 6.0)])
def test_exposure_score(unit, most):
    """systemd's own hardening score (0 = locked down, 10 = exposed) of the shipped units."""
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(SYSTEMD / unit)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout + proc.stderr)
    assert found, proc.stdout + proc.stderr
    print(f"{unit}: exposure {found[1]}")
    assert float(found[1]) <= most
