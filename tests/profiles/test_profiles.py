"""The shipped hardware profiles load, are consistent, and reject unknown keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.errors import BadRequestError, NotFoundError
from profiles.plan.types import TYPES
from profiles.profile import get_profile, list_profiles, load_profile_file

PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles" / "data"
REQUIRED = {
    "laptop-x86-avx2",
    "laptop-x86-avx512",
    "apple-m1",
    "apple-m2",
    "apple-m3",
    "apple-m4",
    "rpi5-4gb",
    "rpi5-8gb",
    "rpi5-16gb",
    "jetson-orin-nano-8gb",
    "jetson-orin-nano-super",
    "jetson-orin-nx-16gb",
    "jetson-agx-orin-64gb",
    "android-8gb-termux",
    "generic",
}


def test_all_required_profiles_ship():
    assert {p.name for p in list_profiles()} >= REQUIRED


@pytest.mark.parametrize("profile", list_profiles(), ids=lambda p: p.name)
def test_profile_is_consistent(profile):
    assert 0 < profile.memory.budget_gib < profile.memory.total_gib
    assert profile.memory.bandwidth_gbs > 0
    assert profile.runtime.threads == profile.cpu.big_cores  # big cores only
    assert all(t in TYPES for t in profile.runtime.quant_types)
    assert 0 < profile.runtime.efficiency <= 1 and profile.runtime.context >= 1024
    if profile.gpu.kind == "cuda":
        assert "CMAKE_CUDA_ARCHITECTURES=87" in profile.build.cmake_args and profile.gpu.unified_memory
    if profile.name.startswith("rpi5"):
        assert "armv8.2-a+dotprod" in profile.build.cmake_args


@pytest.mark.parametrize("path", sorted(PROFILES_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_figure_has_a_source_comment(path):
    lines = [
        line
        for line in path.read_text().splitlines()
        if line.split("=")[0].strip() in ("total_gib", "bandwidth_gbs", "big_cores")
    ]
    assert lines and all("#" in line for line in lines), "each figure needs its source in a comment"


def test_unknown_key_is_rejected_with_the_allowed_ones(tmp_path):
    text = (PROFILES_DIR / "rpi5-8gb.toml").read_text().replace("threads = 4", "threads = 4\nthread = 4")
    bad = tmp_path / "typo.toml"
    bad.write_text(text)
    with pytest.raises(BadRequestError, match=r"unknown key\(s\) \['thread'\] in \[runtime\].*threads"):
        load_profile_file(bad)


def test_unknown_section_and_missing_section(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[memory]\ntotal_gib = 1.0\nbudget_gib = 0.5\nbandwidth_gbs = 1\n[cpus]\nbig_cores = 1\n")
    with pytest.raises(BadRequestError, match="cpus"):
        load_profile_file(bad)
    bad.write_text("[memory]\ntotal_gib = 1.0\nbudget_gib = 0.5\nbandwidth_gbs = 1\n")
    with pytest.raises(BadRequestError, match=r"missing section \[cpu\]"):
        load_profile_file(bad)


def test_budget_larger_than_total_is_refused(tmp_path):
    text = (PROFILES_DIR / "rpi5-4gb.toml").read_text().replace("budget_gib = 3.0", "budget_gib = 5.0")
    bad = tmp_path / "big.toml"
    bad.write_text(text)
    with pytest.raises(BadRequestError, match="budget_gib"):
        load_profile_file(bad)


def test_get_profile_by_name_path_and_unknown():
    assert get_profile("rpi5-8gb").memory.total_gib == 8.0
    assert get_profile(str(PROFILES_DIR / "generic.toml")).name == "generic"
    with pytest.raises(NotFoundError, match="available: .*rpi5-8gb"):
        get_profile("rpi6")


def test_profiles_are_frozen():
    with pytest.raises(AttributeError):
        get_profile("generic").runtime.threads = 99  # type: ignore[misc]
