"""profiles.cpu: SMT siblings, big.LITTLE, affinity and cgroup limits, on fake and recorded /proc and /sys trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from profiles.cpu import cgroup_cpu_limit, cgroup_memory_limit, parse_cpuinfo, physical_cores, read_cpu
from profiles.detect import detect


def _x86(cores: int, threads_per_core: int, sockets: int = 1) -> str:
    blocks, cpu = [], 0
    for socket in range(sockets):
        for _t in range(threads_per_core):
            for core in range(cores):
                blocks.append(
                    f"processor\t: {cpu}\nvendor_id\t: GenuineIntel\nphysical id\t: {socket}\ncore id\t\t: {core}\n"
                )
                cpu += 1
    return "\n".join(blocks)


def _arm(parts: list[int]) -> str:
    blocks = [
        f"processor\t: {i}\nBogoMIPS\t: 48.00\nCPU implementer\t: 0x41\nCPU part\t: {p:#x}\n"
        for i, p in enumerate(parts)
    ]
    return "\n".join(blocks) + "\nHardware\t: fake board\n"


def _tree(tmp_path: Path, cpuinfo: str, *, cpu_max: str | None = None, capacities: list[int] | None = None) -> Path:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/cpuinfo").write_text(cpuinfo)
    (tmp_path / "proc/self/cgroup").write_text("0::/app.slice/edge.service\n")
    cg = tmp_path / "sys/fs/cgroup/app.slice/edge.service"
    cg.mkdir(parents=True)
    if cpu_max is not None:
        (tmp_path / "sys/fs/cgroup/app.slice/cpu.max").write_text(cpu_max)  # set on the parent
    for i, cap in enumerate(capacities or []):
        d = tmp_path / f"sys/devices/system/cpu/cpu{i}"
        d.mkdir(parents=True)
        (d / "cpu_capacity").write_text(f"{cap}\n")
    return tmp_path


A55, A76, A78AE, A72, A53, KRYO = 0xD05, 0xD0B, 0xD42, 0xD08, 0xD03, 0x801


@pytest.mark.parametrize(
    "cpuinfo, allowed, expected",
    [
        (_x86(4, 2), range(8), 4),  # hyper-threads share a core
        (_x86(8, 2, sockets=2), range(32), 16),  # core ids repeat across sockets
        (_x86(4, 2), {0, 4}, 1),  # pinned to both threads of core 0
        (_x86(4, 2), {0, 1}, 2),
        (_arm([A76] * 4), range(4), 4),  # Raspberry Pi 5
        (_arm([A55] * 4 + [A76] * 4), range(8), 4),  # RK3588: big cores only
        (_arm([A55] * 4 + [A76] * 4), {0, 1, 2, 3}, 4),  # pinned to little cores: use them all
        (_arm([A53] * 4 + [A72] * 2), range(6), 2),  # RK3399
        (_arm([A78AE] * 6), range(6), 6),  # Jetson Orin Nano
        (_arm([A53] * 4), range(4), 4),  # Pi 3
    ],
)
def test_physical_cores_from_cpuinfo(tmp_path, cpuinfo, allowed, expected):
    assert physical_cores(_tree(tmp_path, cpuinfo), allowed=set(allowed)) == expected


def test_unknown_arm_parts_fall_back_to_sysfs_capacity(tmp_path):
    root = _tree(tmp_path, _arm([KRYO] * 8), capacities=[325] * 4 + [1024] * 3 + [1024])
    assert physical_cores(root, allowed=set(range(8))) == 4
    root2 = _tree(tmp_path / "same", _arm([KRYO] * 4), capacities=[1024] * 4)
    assert physical_cores(root2, allowed=set(range(4))) == 4


@pytest.mark.parametrize(
    "cpu_max, expected", [("max 100000\n", 4), ("200000 100000\n", 2), ("150000 100000\n", 1), ("50000 100000\n", 1)]
)
def test_cgroup_quota_caps_the_thread_count(tmp_path, cpu_max, expected):
    root = _tree(tmp_path, _x86(4, 2), cpu_max=cpu_max)
    assert physical_cores(root, allowed=set(range(8))) == expected


def test_cgroup_v1_quota(tmp_path):
    root = _tree(tmp_path, _x86(8, 1))
    v1 = root / "sys/fs/cgroup/cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(root) == 3.0
    assert physical_cores(root, allowed=set(range(8))) == 3


def test_missing_sources_fall_back_to_the_allowed_cpus(tmp_path):
    assert physical_cores(tmp_path, allowed={0, 1, 2}) == 3
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("garbage without processors\n\n")
    assert physical_cores(tmp_path, allowed={5}) == 1


def test_this_machine():
    allowed = os.sched_getaffinity(0)
    blocks = [b for b in parse_cpuinfo(Path("/proc/cpuinfo").read_text()) if int(b["processor"]) in allowed]
    if not blocks or not all("core id" in b for b in blocks):
        pytest.skip("no x86-style core ids here")
    cores = len({(b.get("physical id"), b["core id"]) for b in blocks})
    quota = cgroup_cpu_limit()
    assert physical_cores() == max(1, min(cores, int(quota)) if quota else cores)


DEVICES = Path(__file__).parent / "fixtures" / "devices"
# recorded device -> (big cores, little cores): what every user of a thread count must agree on
BIG_LITTLE = {
    "rpi5-8gb": (4, 0),  # 4x Cortex-A76
    "rpi5-4gb-container": (4, 0),  # cpu.max then caps the threads at 2
    "jetson-orin-nano": (6, 0),  # 6x Cortex-A78AE
    "jetson-orin-nano-super": (6, 0),
    "jetson-agx-orin-64gb": (12, 0),
    "android-termux": (5, 3),  # 1x X3 + 2x A715 + 2x A710 big, 3x A510 little
    "rk3588-unknown-board": (4, 4),  # 4x A76 big, 4x A55 little
    "laptop-intel-hybrid": (4, 8),  # 4 P-cores (8 threads), 8 E-cores
    "server-avx512-docker-v1": (8, 0),  # 16 threads on 8 cores; a v1 quota of 3 CPUs
    "macos-m2": (4, 4),
}


@pytest.mark.parametrize("device", sorted(BIG_LITTLE))
def test_detect_and_the_engines_get_the_same_threads(device):
    cpu = read_cpu(DEVICES / device)
    assert (cpu.big_cores, cpu.little_cores) == BIG_LITTLE[device]
    found = detect(DEVICES / device)
    assert found.threads == physical_cores(DEVICES / device) == cpu.threads(default=1)[0]


def test_every_device_has_an_expectation():
    assert {p.name for p in DEVICES.iterdir() if p.is_dir()} == set(BIG_LITTLE)


A7, A15, QCOM = 0xC07, 0xC0F, 0x51


def test_cortex_a7_is_little(tmp_path):
    assert physical_cores(_tree(tmp_path, _arm([A7] * 4 + [A15] * 4)), allowed=set(range(8))) == 4  # Exynos 5422
    assert physical_cores(_tree(tmp_path / "pi2", _arm([A7] * 4)), allowed=set(range(4))) == 4  # Pi 2: all little


def test_other_implementers_parts_are_not_read_as_arm_parts(tmp_path):
    """Qualcomm (implementer 0x51) numbers its own cores: 0xd05 there is not a Cortex-A55."""
    text = _arm([A55] * 4 + [A76] * 4).replace("CPU implementer\t: 0x41", f"CPU implementer\t: {QCOM:#x}")
    assert physical_cores(_tree(tmp_path, text), allowed=set(range(8))) == 8  # unknown cores count as big
    root = _tree(tmp_path / "cap", text, capacities=[400] * 4 + [1024] * 4)
    assert physical_cores(root, allowed=set(range(8))) == 4  # ... unless sysfs capacities say otherwise


def test_intel_hybrid_pinned_to_e_cores(tmp_path):
    root = DEVICES / "laptop-intel-hybrid"
    assert physical_cores(root, allowed={0, 1, 8}) == 1  # both threads of one P-core; the E-core left out
    assert physical_cores(root, allowed={8, 9, 10}) == 3


def test_cgroup_memory_limit_on_the_process_cgroup(tmp_path):
    root = _tree(tmp_path, _x86(2, 1))
    (root / "sys/fs/cgroup/app.slice/memory.max").write_text("2147483648\n")
    (root / "sys/fs/cgroup/app.slice/edge.service/memory.max").write_text("max\n")
    assert cgroup_memory_limit(root) == 2 * 2**30
