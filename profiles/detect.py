"""Device detection: read what the OS exposes, pick a hardware profile, and say why.

Everything is read relative to a root folder (profiles.probe) so that tests can feed recorded
files. The CPU, its thread count and the cgroup limits come from profiles.cpu; this module adds
/proc/meminfo, /proc/device-tree/model, /etc/nv_tegra_release, /system/build.prop (or `getprop`
output) and `sysctl -a` (macOS RAM and chip), then picks the profile.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from profiles.cpu import Cpu, cgroup_memory_limit, read_cpu, sysctl
from profiles.probe import Probe, kv_lines
from profiles.profile import GIB, Profile, list_profiles

SIMD_FLAG_PREFIXES = ("avx", "fma", "f16c", "sse4", "amx")  # the x86 flags worth reporting


@dataclass
class Facts:
    """What was found on the device; None where a source was absent."""

    cpu: Cpu = field(default_factory=Cpu)  # profiles.cpu: topology, affinity, CPU quota
    mem_total_bytes: int | None = None  # board RAM (MemTotal or hw.memsize)
    cgroup_mem_limit: int | None = None  # container memory limit, if any
    device_tree_model: str = ""
    l4t_release: str = ""  # "36.4.3"
    android: bool = False
    android_model: str = ""
    termux: bool = False
    apple_chip: str = ""

    @property
    def effective_mem_bytes(self) -> int | None:
        """The memory this process may use: a container's limit wins over the board's RAM."""
        values = [v for v in (self.mem_total_bytes, self.cgroup_mem_limit) if v]
        return min(values) if values else None


@dataclass
class Detection:
    profile: Profile
    facts: Facts
    threads: int
    budget_bytes: int
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        facts = asdict(self.facts)
        facts = {**facts.pop("cpu"), **facts}
        facts["effective_mem_bytes"] = self.facts.effective_mem_bytes
        facts["cpu_flags"] = [f for f in self.facts.cpu.cpu_flags if f.startswith(SIMD_FLAG_PREFIXES)]
        return {
            "profile": self.profile.name,
            "description": self.profile.description,
            "threads": self.threads,
            "budget_bytes": self.budget_bytes,
            "budget_gib": round(self.budget_bytes / GIB, 2),
            "reasons": self.reasons,
            "facts": facts,
        }


def parse_meminfo(text: str) -> int | None:
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.M)
    return int(match.group(1)) * 1024 if match else None


def read_android(probe: Probe, facts: Facts) -> None:
    """`getprop` prints "[key]: [value]"; /system/build.prop holds "key=value"."""
    props = {}
    getprop = probe.command("getprop")
    if getprop:
        props = dict(re.findall(r"^\[([^\]]+)\]: \[([^\]]*)\]", getprop, re.M))
    build_prop = probe.read("system/build.prop")
    if build_prop:
        props = {**dict(kv_lines(build_prop, "=")), **props}
    if props.get("ro.build.version.sdk") or props.get("ro.build.version.release"):
        facts.android = True
        facts.android_model = props.get("ro.product.model", "")
    facts.termux = probe.exists("data/data/com.termux/files/usr") or "com.termux" in os.environ.get("PREFIX", "")


def read_macos(probe: Probe, facts: Facts) -> None:
    """macOS has no /proc: `sysctl -a` gives the RAM (hw.memsize) and the chip (machdep.cpu.brand_string)."""
    kv = sysctl(probe)
    brand = kv.get("machdep.cpu.brand_string", "")
    if "hw.memsize" in kv:
        facts.mem_total_bytes = int(kv["hw.memsize"])
    if brand.startswith("Apple"):
        facts.apple_chip = brand


def gather(root: Path = Path("/"), allowed: set[int] | None = None) -> Facts:
    probe = Probe(root)
    facts = Facts(cpu=read_cpu(root, allowed), cgroup_mem_limit=cgroup_memory_limit(probe))
    meminfo = probe.read("proc/meminfo")
    facts.mem_total_bytes = parse_meminfo(meminfo) if meminfo else None
    facts.device_tree_model = (probe.read("proc/device-tree/model") or "").strip("\x00\n ")
    tegra = probe.read("etc/nv_tegra_release")
    if tegra:
        match = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", tegra)
        facts.l4t_release = f"{match.group(1)}.{match.group(2)}" if match else "0"
    read_android(probe, facts)
    read_macos(probe, facts)
    return facts


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text))


def match_profile(profile: Profile, facts: Facts) -> str | None:
    """Why `profile` fits these facts (a sentence), or None when one of its conditions fails."""
    m, why = profile.match, []
    if m.arch:
        if facts.cpu.arch != m.arch:
            return None
        why.append(f"arch {facts.cpu.arch}")
    if m.cpu_flags:
        if not set(m.cpu_flags) <= set(facts.cpu.cpu_flags):
            return None
        why.append("CPU flags " + ", ".join(m.cpu_flags))
    if m.device_tree:
        if m.device_tree not in facts.device_tree_model:
            return None
        why.append(f"device tree model {facts.device_tree_model!r}")
    if m.jetson is not None:
        if bool(facts.l4t_release) != m.jetson:
            return None
        why.append(f"/etc/nv_tegra_release L4T {facts.l4t_release}" if m.jetson else "not a Jetson")
    if m.l4t_min:
        if not facts.l4t_release or _version(facts.l4t_release) < _version(m.l4t_min):
            return None
        why.append(f"L4T >= {m.l4t_min} (JetPack 6.2 enables the MAXN SUPER mode)")
    if m.android is not None:
        if facts.android != m.android:
            return None
        why.append(f"Android build properties ({facts.android_model or 'model unknown'})")
    if m.apple:
        if m.apple not in facts.apple_chip:
            return None
        why.append(f"sysctl brand {facts.apple_chip!r}")
    if m.min_mem_gib or m.max_mem_gib:
        gib = (facts.mem_total_bytes or 0) / GIB
        if gib < m.min_mem_gib or (m.max_mem_gib and gib >= m.max_mem_gib):
            return None
        why.append(f"{gib:.1f} GiB RAM")
    return "; ".join(why) or "fallback: nothing more specific matched"


def effective_budget(profile: Profile, facts: Facts) -> tuple[int, str]:
    """Bytes for the model: the board's RAM minus the profile's OS reserve, or a container's limit."""
    reserve = int(profile.os_reserve_gib * GIB)
    if facts.cgroup_mem_limit and facts.cgroup_mem_limit < (facts.mem_total_bytes or 1 << 62):
        runtime_reserve = int(0.25 * GIB)  # the server process itself (Python, buffers) inside the limit
        budget = max(0, facts.cgroup_mem_limit - runtime_reserve)
        return budget, f"container memory limit {facts.cgroup_mem_limit / GIB:.2f} GiB wins over the board's RAM"
    if facts.mem_total_bytes:
        budget = max(0, facts.mem_total_bytes - reserve)
        return budget, f"{facts.mem_total_bytes / GIB:.1f} GiB RAM minus {profile.os_reserve_gib:.1f} GiB for the OS"
    return profile.budget_bytes, "memory unknown: the profile's budget"


def detect(root: Path = Path("/"), allowed: set[int] | None = None) -> Detection:
    """The best matching profile for the device at `root` (the generic profile when nothing else fits).
    `allowed` is the affinity set (profiles.cpu.read_cpu): this process's own on the live device."""
    facts = gather(root, allowed)
    for profile in sorted(list_profiles(), key=lambda p: (p.match.priority, p.name)):
        why = match_profile(profile, facts)
        if why is not None:
            break
    budget, budget_why = effective_budget(profile, facts)
    threads, threads_why = facts.cpu.threads(default=profile.runtime.threads)
    reasons = [
        f"profile {profile.name}: {why}",
        f"budget {budget / GIB:.2f} GiB: {budget_why}",
        f"threads {threads}: {threads_why}",
    ]
    return Detection(profile=profile, facts=facts, threads=threads, budget_bytes=budget, reasons=reasons)
