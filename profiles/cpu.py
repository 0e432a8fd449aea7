"""The CPU: topology, affinity and cgroup limits, read in one place; one thread count for everyone.

Token generation is bound by memory bandwidth: a second hyper-thread per core only adds contention,
and llama.cpp's threads work in lock step, so little cores of a big.LITTLE CPU slow every step down
to their pace. The default thread count is therefore the physical big cores this process may run
on, within its cgroup CPU quota. `edge serve`, `edge run`, both engines and `edge profile` all take
it from `read_cpu(...).threads(...)` (or `physical_cores()`, the same answer).

Sources, each read relative to a device root (profiles.probe) so recorded devices can be tested:

1. /proc/cpuinfo. x86: distinct (physical id, core id) pairs are the physical cores; Intel hybrid
   CPUs list their P- and E-cores in /sys/devices/cpu_core/cpus and cpu_atom/cpus. ARM: one core per
   processor; `CPU part`s of Arm Ltd (implementer 0x41) are big or little by the tables below. With
   an unknown part, sysfs `cpu_capacity` decides (below half the largest capacity is little), and
   without it the unknown core counts as big.
2. macOS (no /proc): `sysctl` hw.perflevel0/1.physicalcpu (performance / efficiency cores).
3. The CPUs this process may run on (os.sched_getaffinity, live device only): only those count;
   pinned to little cores only, those are used.
4. cgroup quotas on this process's cgroup and its ancestors: v2 `cpu.max` and `memory.max`, v1
   `cpu.cfs_quota_us` and `memory.limit_in_bytes`; the tightest wins.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from profiles.probe import Probe, kv_lines

ARM_LTD = 0x41  # `CPU implementer` of Arm's own cores; part numbers of other implementers differ
# Arm `CPU part` ids (MIDR_EL1.PartNum, from the Arm technical reference manuals).
LITTLE_PARTS = {
    0xC07: "Cortex-A7", 0xD03: "Cortex-A53", 0xD04: "Cortex-A35", 0xD05: "Cortex-A55",
    0xD46: "Cortex-A510", 0xD80: "Cortex-A520",
}  # fmt: skip
BIG_PARTS = {
    0xC0D: "Cortex-A12", 0xC0E: "Cortex-A17", 0xC0F: "Cortex-A15",
    0xD07: "Cortex-A57", 0xD08: "Cortex-A72", 0xD09: "Cortex-A73", 0xD0A: "Cortex-A75",
    0xD0B: "Cortex-A76", 0xD0C: "Neoverse-N1", 0xD0D: "Cortex-A77", 0xD40: "Neoverse-V1",
    0xD41: "Cortex-A78", 0xD42: "Cortex-A78AE", 0xD44: "Cortex-X1", 0xD47: "Cortex-A710",
    0xD48: "Cortex-X2", 0xD49: "Neoverse-N2", 0xD4B: "Cortex-A78C", 0xD4D: "Cortex-A715",
    0xD4E: "Cortex-X3", 0xD4F: "Neoverse-V2", 0xD81: "Cortex-A720", 0xD82: "Cortex-X4",
    0xD85: "Cortex-X925", 0xD87: "Cortex-A725",
}  # fmt: skip
CGROUP_UNLIMITED = 1 << 60  # v1 reports 9223372036854771712 for "no limit"


@dataclass(frozen=True)
class Cpu:
    """What the device's CPU offers this process. Counts are of the CPUs it may run on."""

    arch: str = ""
    cpu_model: str = ""
    cpu_flags: tuple[str, ...] = ()
    logical_cpus: int = 0  # logical CPUs of the device
    big_cores: int | None = None  # physical performance cores; None: nothing was readable
    little_cores: int | None = None  # efficiency cores (left out of the thread count)
    core_names: tuple[str, ...] = ()  # ARM core names, e.g. ("Cortex-A55", "Cortex-A76")
    allowed_cpus: int | None = None  # logical CPUs in this process's affinity mask (live device)
    cgroup_cpus: float | None = None  # cgroup CPU quota in cores, if any

    def threads(self, default: int) -> tuple[int, str]:
        """The thread count for llama.cpp and onnxruntime, and why; `default` when nothing is known."""
        big, little = self.big_cores or 0, self.little_cores or 0
        if big:
            threads = big
            why = f"{big} big cores, {little} little cores left out" if little else f"{big} physical cores"
        elif little:
            threads, why = little, f"{little} little cores (no big core allowed)"
        else:
            threads, why = default, "CPU unknown: the profile's default"
        if self.allowed_cpus is not None and self.allowed_cpus < self.logical_cpus:
            why += f" among the {self.allowed_cpus} of {self.logical_cpus} CPUs this process may use"
        if self.cgroup_cpus is not None and self.cgroup_cpus < threads:
            threads = max(1, int(self.cgroup_cpus))
            why += f"; container CPU quota {self.cgroup_cpus:g}"
        return threads, why


def read_cpu(root: Path = Path("/"), allowed: set[int] | None = None) -> Cpu:
    """The CPU at `root`. `allowed` (the affinity set) defaults to this process's on the live
    device and to every CPU of a recorded one."""
    probe = Probe(root)
    if allowed is None and probe.live:
        allowed = _affinity()
    quota = cgroup_cpu_limit(probe)
    blocks = parse_cpuinfo(probe.read("proc/cpuinfo") or "")
    if blocks:
        return _from_cpuinfo(probe, blocks, allowed, quota)
    mac = _from_sysctl(probe, quota)
    if mac is not None:
        return mac
    n = len(allowed) if allowed is not None else (os.cpu_count() if probe.live else None)
    return Cpu(arch=_live_arch(probe), logical_cpus=n or 0, big_cores=n, little_cores=0, cgroup_cpus=quota)


def physical_cores(root: Path = Path("/"), allowed: set[int] | None = None) -> int:
    """The default thread count (`Cpu.threads`); >= 1."""
    return read_cpu(root, allowed).threads(default=os.cpu_count() or 1)[0]


# -- /proc/cpuinfo ---------------------------------------------------------------------------


def parse_cpuinfo(text: str) -> list[dict[str, str]]:
    """One dict per `processor` block of /proc/cpuinfo (keys lower-cased)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if current:
                blocks.append(current)
            current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip().lower()] = value.strip()
    return [b for b in blocks if b.get("processor", "").isdigit()]


def _from_cpuinfo(probe: Probe, blocks: list[dict[str, str]], allowed: set[int] | None, quota: float | None) -> Cpu:
    usable = [b for b in blocks if allowed is None or int(b["processor"]) in allowed]
    flags = next((tuple(b["flags"].split()) for b in blocks if "flags" in b), ())
    parts = [_arm_part(b) for b in blocks if "cpu part" in b]
    arch = _live_arch(probe) or ("aarch64" if parts else "x86_64" if flags else "")
    kinds = _kinds(probe, usable)
    big = _count_cores([b for b, k in zip(usable, kinds) if k == "big"])
    little = _count_cores([b for b, k in zip(usable, kinds) if k == "little"])
    return Cpu(
        arch=arch,
        cpu_model=_model(probe, blocks),
        cpu_flags=flags,
        logical_cpus=len(blocks),
        big_cores=big,
        little_cores=little,
        core_names=tuple(sorted({_part_name(p) for p in parts if p is not None})),
        allowed_cpus=len(usable) if allowed is not None else None,
        cgroup_cpus=quota,
    )


def _kinds(probe: Probe, blocks: list[dict[str, str]]) -> list[str]:
    """ "big" or "little" for each processor block."""
    cpus = [int(b["processor"]) for b in blocks]
    core, atom = probe.read("sys/devices/cpu_core/cpus"), probe.read("sys/devices/cpu_atom/cpus")
    if core is not None and atom is not None:  # Intel hybrid: P-cores and E-cores are separate PMUs
        e_cores = parse_cpulist(atom)
        return ["little" if cpu in e_cores else "big" for cpu in cpus]
    parts = [_arm_part(b) for b in blocks]
    is_arm = any("cpu part" in b for b in blocks)
    if is_arm and not all(p in BIG_PARTS or p in LITTLE_PARTS for p in parts):
        capacity = _capacities(probe, cpus)
        if capacity is not None:
            top = max(capacity)
            return ["big" if c * 2 > top else "little" for c in capacity]
    return ["little" if p in LITTLE_PARTS else "big" for p in parts]


def _count_cores(blocks: list[dict[str, str]]) -> int:
    """Physical cores: SMT siblings share a (physical id, core id); ARM has no core ids, one core each."""
    if blocks and all("core id" in b for b in blocks):
        return len({(b.get("physical id", "0"), b["core id"]) for b in blocks})
    return len(blocks)


def _arm_part(block: dict[str, str]) -> int | None:
    """The `CPU part` of an Arm Ltd core; None for other implementers (their ids mean other cores)."""
    try:
        if int(block.get("cpu implementer", hex(ARM_LTD)), 16) != ARM_LTD:
            return None
        return int(block["cpu part"], 16)
    except (KeyError, ValueError):
        return None


def _part_name(part: int) -> str:
    return BIG_PARTS.get(part) or LITTLE_PARTS.get(part) or hex(part)


def _capacities(probe: Probe, cpus: list[int]) -> list[int] | None:
    """sysfs cpu_capacity (1024 = the biggest core) per CPU; None unless every CPU has one and they differ."""
    caps = []
    for cpu in cpus:
        text = probe.read(f"sys/devices/system/cpu/cpu{cpu}/cpu_capacity")
        if text is None or not text.strip().isdigit():
            return None
        caps.append(int(text))
    return caps if len(set(caps)) > 1 else None


def _model(probe: Probe, blocks: list[dict[str, str]]) -> str:
    if "model name" in blocks[0]:
        return blocks[0]["model name"]
    # ARM kernels print the board after the processor blocks: "Hardware" (32-bit), "Model" (Raspberry Pi)
    tail = dict(kv_lines(probe.read("proc/cpuinfo") or "", ":"))
    return tail.get("Hardware") or tail.get("Model") or ""


def parse_cpulist(text: str) -> set[int]:
    """'0-3,8-11' -> {0, 1, 2, 3, 8, 9, 10, 11}."""
    out: set[int] = set()
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        if lo.strip().isdigit():
            out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _live_arch(probe: Probe) -> str:
    if not probe.live:
        return ""
    return {"arm64": "aarch64", "AMD64": "x86_64"}.get(platform.machine(), platform.machine())


def _affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return None


# -- macOS -----------------------------------------------------------------------------------


def sysctl(probe: Probe) -> dict[str, str]:
    """`sysctl -a` as a dict (macOS only; empty elsewhere)."""
    if probe.live and platform.system() != "Darwin":
        return {}
    return dict(kv_lines(probe.command("sysctl", "-a") or "", ":"))


def _from_sysctl(probe: Probe, quota: float | None) -> Cpu | None:
    kv = sysctl(probe)
    if not kv:
        return None
    brand = kv.get("machdep.cpu.brand_string", "")
    big = kv.get("hw.perflevel0.physicalcpu") or kv.get("hw.physicalcpu")
    little = kv.get("hw.perflevel1.physicalcpu", "0")
    return Cpu(
        arch="aarch64" if brand.startswith("Apple") else _live_arch(probe),
        cpu_model=brand,
        logical_cpus=int(kv.get("hw.logicalcpu", 0)),
        big_cores=int(big) if big else None,
        little_cores=int(little) if "hw.perflevel0.physicalcpu" in kv else 0,
        cgroup_cpus=quota,
    )


# -- cgroups ---------------------------------------------------------------------------------


def _own_cgroup_dirs(probe: Probe) -> list[Path]:
    """This process's cgroup v2 directory and its ancestors (a limit may be set on any of them)."""
    text = probe.read("proc/self/cgroup") or ""
    rel = next((line.split(":", 2)[2] for line in text.splitlines() if line.startswith("0::")), "/")
    base = probe.path("sys/fs/cgroup")
    here = base / rel.strip().lstrip("/")
    return [here, *[p for p in here.parents if p == base or base in p.parents]]


def _v1_dirs(probe: Probe, controller: str, mounts: tuple[str, ...]) -> list[Path]:
    """cgroup v1 folders of one controller: this process's own (from /proc/self/cgroup) and the mount roots."""
    text = probe.read("proc/self/cgroup") or ""
    out = []
    for line in text.splitlines():
        _, controllers, rel = (line.split(":", 2) + ["", ""])[:3]
        if controller in controllers.split(","):
            out += [probe.path("sys/fs/cgroup") / mount / rel.strip().lstrip("/") for mount in mounts]
    return [*out, *(probe.path("sys/fs/cgroup") / mount for mount in mounts)]


def _read_path(probe: Probe, path: Path) -> str:
    return probe.read(str(path.relative_to(probe.root))) or ""


def cgroup_cpu_limit(root: Path | Probe = Path("/")) -> float | None:
    """CPUs granted by a cgroup quota (v2 cpu.max or v1 cfs quota), the tightest on the path; None if unlimited."""
    probe = root if isinstance(root, Probe) else Probe(root)
    limits = []
    for d in _own_cgroup_dirs(probe):
        fields = _read_path(probe, d / "cpu.max").split()
        if len(fields) == 2 and fields[0] != "max":
            limits.append(_ratio(fields[0], fields[1]))
    for d in _v1_dirs(probe, "cpu", ("cpu", "cpu,cpuacct")):
        quota, period = _read_path(probe, d / "cpu.cfs_quota_us"), _read_path(probe, d / "cpu.cfs_period_us")
        if quota and period and quota.strip() != "-1":
            limits.append(_ratio(quota, period))
    found = [x for x in limits if x]
    return min(found) if found else None


def cgroup_memory_limit(root: Path | Probe = Path("/")) -> int | None:
    """Bytes granted by a cgroup memory limit (v2 memory.max or v1 limit_in_bytes), the tightest; None if unlimited."""
    probe = root if isinstance(root, Probe) else Probe(root)
    files = [d / "memory.max" for d in _own_cgroup_dirs(probe)]
    files += [d / "memory.limit_in_bytes" for d in _v1_dirs(probe, "memory", ("memory",))]
    limits = [int(raw) for raw in (_read_path(probe, f).strip() for f in files) if raw.isdigit()]
    limits = [n for n in limits if n < CGROUP_UNLIMITED]
    return min(limits) if limits else None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None
