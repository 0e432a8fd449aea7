"""Device detection: how many threads the model should run on.

`physical_cores()` is the default thread count for llama.cpp: token generation is bound by memory
bandwidth and a second hyper-thread per core only adds contention, and on big.LITTLE ARM boards
the little cores slow every step down to their pace. It combines, in order:

1. /proc/cpuinfo: distinct (physical id, core id) pairs on x86; on ARM (no core ids) one core per
   processor, counting only the big cores when the `CPU part`s show a known big/little mix
   (e.g. RK3588: 4x Cortex-A76 + 4x Cortex-A55 -> 4). Without known parts, sysfs `cpu_capacity`
   is used the same way (cores below half the largest capacity are little);
2. only the CPUs this process may run on (os.sched_getaffinity);
3. a cgroup CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), rounded down, at least 1;
4. fallbacks when a source is missing: logical CPU count, then 1.
"""

from __future__ import annotations

import os
from pathlib import Path

# ARM `CPU part` ids (Arm Ltd, implementer 0x41), from the Arm technical reference manuals.
LITTLE_PARTS = {
    0xC07: "Cortex-A7", 0xD03: "Cortex-A53", 0xD04: "Cortex-A35", 0xD05: "Cortex-A55",
    0xD46: "Cortex-A510", 0xD80: "Cortex-A520",
}  # fmt: skip
BIG_PARTS = {
    0xD07: "Cortex-A57", 0xD08: "Cortex-A72", 0xD09: "Cortex-A73", 0xD0A: "Cortex-A75",
    0xD0B: "Cortex-A76", 0xD0C: "Neoverse-N1", 0xD0D: "Cortex-A77", 0xD41: "Cortex-A78",
    0xD42: "Cortex-A78AE", 0xD44: "Cortex-X1", 0xD47: "Cortex-A710", 0xD48: "Cortex-X2",
    0xD4B: "Cortex-A78C", 0xD4D: "Cortex-A715", 0xD4E: "Cortex-X3", 0xD81: "Cortex-A720",
    0xD82: "Cortex-X4", 0xD87: "Cortex-A725", 0xD85: "Cortex-X925",
}  # fmt: skip


def parse_cpuinfo(text: str) -> list[dict[str, str]]:
    """One dict per `processor` block of /proc/cpuinfo (keys lower-cased)."""
    blocks, current = [], {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
            current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip().lower()] = value.strip()
    if current:
        blocks.append(current)
    return [b for b in blocks if "processor" in b and b["processor"].isdigit()]


def _cpu_part(block: dict[str, str]) -> int | None:
    try:
        return int(block["cpu part"], 16)
    except (KeyError, ValueError):
        return None


def cores_from_cpuinfo(blocks: list[dict[str, str]]) -> int | None:
    """Physical (or big) cores among these processor blocks; None when there are none."""
    if not blocks:
        return None
    if all("core id" in b for b in blocks):  # x86 and some ARM servers: SMT siblings share a core id
        return len({(b.get("physical id", "0"), b["core id"]) for b in blocks})
    parts = [_cpu_part(b) for b in blocks]
    big = sum(p in BIG_PARTS for p in parts)
    little = sum(p in LITTLE_PARTS for p in parts)
    if big and little:
        return big
    return len(blocks)


def cores_from_capacity(sys_cpu: Path, allowed: set[int]) -> int | None:
    """big.LITTLE via sysfs cpu_capacity (1024 = the biggest core); None if the kernel does not say."""
    caps = {}
    for cpu in allowed:
        try:
            caps[cpu] = int((sys_cpu / f"cpu{cpu}" / "cpu_capacity").read_text())
        except (OSError, ValueError):
            return None
    if not caps or len(set(caps.values())) == 1:
        return None
    top = max(caps.values())
    return sum(c * 2 > top for c in caps.values())


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _own_cgroup_dirs(root: Path) -> list[Path]:
    """This process's cgroup directory and its ancestors (a quota may be set on any of them)."""
    text = _read(root / "proc/self/cgroup") or ""
    rel = next((line.split(":", 2)[2] for line in text.splitlines() if line.startswith("0::")), "/")
    base = root / "sys/fs/cgroup"
    here = base / rel.strip().lstrip("/")
    return [here, *[p for p in here.parents if p == base or base in p.parents]]


def cgroup_cpu_limit(root: Path = Path("/")) -> float | None:
    """CPUs granted by a cgroup quota (v2 cpu.max or v1 cfs quota), the tightest on the path; None if unlimited."""
    limits = []
    for d in _own_cgroup_dirs(root):
        fields = (_read(d / "cpu.max") or "").split()
        if len(fields) == 2 and fields[0] != "max":
            limits.append(_ratio(fields[0], fields[1]))
    for v1 in _v1_cpu_dirs(root):
        quota, period = _read(v1 / "cpu.cfs_quota_us"), _read(v1 / "cpu.cfs_period_us")
        if quota and period and quota.strip() != "-1":
            limits.append(_ratio(quota, period))
    limits = [x for x in limits if x]
    return min(limits) if limits else None


def _v1_cpu_dirs(root: Path) -> list[Path]:
    """cgroup v1 cpu controller folders: this process's own (from /proc/self/cgroup) and the mount root."""
    text = _read(root / "proc/self/cgroup") or ""
    out = []
    for line in text.splitlines():
        _, controllers, rel = (line.split(":", 2) + ["", ""])[:3]
        if "cpu" in controllers.split(","):
            for mount in ("cpu", "cpu,cpuacct"):
                out.append(root / "sys/fs/cgroup" / mount / rel.strip().lstrip("/"))
    return [*out, root / "sys/fs/cgroup/cpu", root / "sys/fs/cgroup/cpu,cpuacct"]


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _allowed_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return None


def physical_cores(root: Path = Path("/"), allowed: set[int] | None = None) -> int:
    """Default thread count: physical (big) cores this process may use, within its cgroup quota; >= 1.

    `root` and `allowed` exist for tests (a fake /proc and /sys tree, a fake affinity set).
    """
    allowed = allowed if allowed is not None else _allowed_cpus()
    blocks = parse_cpuinfo(_read(root / "proc/cpuinfo") or "")
    if allowed is not None:
        blocks = [b for b in blocks if int(b["processor"]) in allowed]
    cores = cores_from_cpuinfo(blocks)
    if allowed and (cores is None or _needs_capacity(blocks)):
        by_capacity = cores_from_capacity(root / "sys/devices/system/cpu", allowed)
        cores = by_capacity if by_capacity is not None else cores
    if cores is None:
        cores = len(allowed) if allowed else (os.cpu_count() or 1)
    quota = cgroup_cpu_limit(root)
    if quota is not None:
        cores = min(cores, int(quota))
    return max(1, cores)


def _needs_capacity(blocks: list[dict[str, str]]) -> bool:
    """ARM cores (no core ids) whose parts are not all in our tables: let sysfs capacities decide."""
    if not blocks or all("core id" in b for b in blocks):
        return False
    return not all(_cpu_part(b) in BIG_PARTS or _cpu_part(b) in LITTLE_PARTS for b in blocks)
