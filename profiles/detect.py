"""Device detection: read what the OS exposes, pick a hardware profile, and say why.

Everything is read relative to a root folder so that tests can feed recorded files:
/proc/cpuinfo, /proc/meminfo, /proc/device-tree/model, /etc/nv_tegra_release,
/system/build.prop (or `getprop` output), `sysctl -a` (macOS), cgroup v1/v2 memory and CPU limits,
/sys/devices/cpu_core|cpu_atom/cpus (Intel hybrid). Commands (getprop, sysctl) run only on the live
root "/"; under any other root their recorded output is read from `<root>/commands/<name>.txt`.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from profiles.profile import GIB, Profile, list_profiles

# ARM "CPU part" ids of in-order efficiency cores (Arm TRMs, MIDR_EL1 PartNum). Everything else is "big".
LITTLE_ARM_PARTS = {
    0xD03: "Cortex-A53",
    0xD04: "Cortex-A35",
    0xD05: "Cortex-A55",
    0xD46: "Cortex-A510",
    0xD80: "Cortex-A520",
}
ARM_PART_NAMES = {
    0xD08: "Cortex-A72",
    0xD0B: "Cortex-A76",
    0xD0D: "Cortex-A77",
    0xD41: "Cortex-A78",
    0xD42: "Cortex-A78AE",
    0xD44: "Cortex-X1",
    0xD47: "Cortex-A710",
    0xD48: "Cortex-X2",
    0xD4D: "Cortex-A715",
    0xD4E: "Cortex-X3",
    0xD81: "Cortex-A720",
    0xD82: "Cortex-X4",
    **LITTLE_ARM_PARTS,
}
SIMD_FLAG_PREFIXES = ("avx", "fma", "f16c", "sse4", "amx")  # the x86 flags worth reporting
CGROUP_UNLIMITED = 1 << 60  # v1 reports 9223372036854771712 for "no limit"
MAX_READ = 1 << 20  # never read more than 1 MiB of any probed file


@dataclass
class Facts:
    """What was found on the device; None where a source was absent."""

    arch: str = ""
    cpu_model: str = ""
    cpu_flags: tuple[str, ...] = ()
    logical_cpus: int = 0
    big_cores: int | None = None
    little_cores: int | None = None
    core_names: tuple[str, ...] = ()
    mem_total_bytes: int | None = None  # board RAM (MemTotal or hw.memsize)
    cgroup_mem_limit: int | None = None  # container memory limit, if any
    cgroup_cpus: float | None = None  # container CPU quota in cores, if any
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
        facts["effective_mem_bytes"] = self.facts.effective_mem_bytes
        facts["cpu_flags"] = [f for f in self.facts.cpu_flags if f.startswith(SIMD_FLAG_PREFIXES)]
        return {
            "profile": self.profile.name,
            "description": self.profile.description,
            "threads": self.threads,
            "budget_bytes": self.budget_bytes,
            "budget_gib": round(self.budget_bytes / GIB, 2),
            "reasons": self.reasons,
            "facts": facts,
        }


class Probe:
    """Reads files under `root`; runs (live root) or reads (recorded root) command output."""

    def __init__(self, root: Path = Path("/")):
        self.root = Path(root)
        self.live = self.root.resolve() == Path("/")

    def read(self, rel: str) -> str | None:
        path = self.root / rel.lstrip("/")
        try:
            with open(path, "rb") as fh:
                return fh.read(MAX_READ).decode("utf-8", "replace")
        except OSError:
            return None

    def exists(self, rel: str) -> bool:
        return (self.root / rel.lstrip("/")).exists()

    def command(self, name: str, *args: str) -> str | None:
        if not self.live:
            return self.read(f"commands/{name}.txt")
        try:
            out = subprocess.run([name, *args], capture_output=True, timeout=5, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout[:MAX_READ].decode("utf-8", "replace") if out.returncode == 0 else None


def parse_cpuinfo(text: str, facts: Facts) -> None:
    """x86 `flags` and `model name`; ARM `CPU part` per processor block (big vs little)."""
    blocks = [b for b in text.split("\n\n") if "processor" in b]
    facts.logical_cpus = len(blocks) or facts.logical_cpus
    parts, core_ids = [], set()
    for block in blocks:
        kv = dict(_kv_lines(block, ":"))
        if "flags" in kv and not facts.cpu_flags:
            facts.cpu_flags = tuple(kv["flags"].split())
        facts.cpu_model = facts.cpu_model or kv.get("model name", "") or kv.get("Hardware", "")
        if "CPU part" in kv:
            parts.append(int(kv["CPU part"], 16))
        if "core id" in kv:
            core_ids.add((kv.get("physical id", "0"), kv["core id"]))
    if parts:
        facts.arch = facts.arch or "aarch64"
        facts.little_cores = sum(p in LITTLE_ARM_PARTS for p in parts)
        facts.big_cores = len(parts) - facts.little_cores
        facts.core_names = tuple(sorted({ARM_PART_NAMES.get(p, hex(p)) for p in parts}))
    elif facts.cpu_flags:
        facts.arch = facts.arch or "x86_64"
        facts.big_cores = len(core_ids) or facts.logical_cpus  # physical cores: SMT siblings do not help
        facts.little_cores = 0


def _kv_lines(text: str, sep: str):
    for line in text.splitlines():
        if sep in line:
            key, _, value = line.partition(sep)
            yield key.strip(), value.strip()


def parse_meminfo(text: str) -> int | None:
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.M)
    return int(match.group(1)) * 1024 if match else None


def parse_cpulist(text: str) -> int:
    """'0-3,8-11' -> 8."""
    count = 0
    for part in text.strip().split(","):
        if "-" in part:
            lo, hi = part.split("-")
            count += int(hi) - int(lo) + 1
        elif part:
            count += 1
    return count


def read_intel_hybrid(probe: Probe, facts: Facts) -> None:
    """Intel hybrid CPUs expose P- and E-cores as separate PMUs (Linux perf: cpu_core / cpu_atom)."""
    core, atom = probe.read("sys/devices/cpu_core/cpus"), probe.read("sys/devices/cpu_atom/cpus")
    if core is None or atom is None:
        return
    smt = 2 if "ht" in facts.cpu_flags else 1
    facts.big_cores = max(1, parse_cpulist(core) // smt)  # P-cores carry SMT siblings, E-cores do not
    facts.little_cores = parse_cpulist(atom)


def read_cgroup(probe: Probe, facts: Facts) -> None:
    """cgroup v2 memory.max / cpu.max, else v1 memory.limit_in_bytes / cpu.cfs_quota_us."""
    v2 = probe.read("sys/fs/cgroup/memory.max")
    v1 = probe.read("sys/fs/cgroup/memory/memory.limit_in_bytes")
    for raw in (v2, v1):
        if raw and raw.strip().isdigit() and int(raw) < CGROUP_UNLIMITED:
            facts.cgroup_mem_limit = int(raw)
            break
    cpu_max = probe.read("sys/fs/cgroup/cpu.max")
    if cpu_max and not cpu_max.startswith("max"):
        quota, period = cpu_max.split()[:2]
        facts.cgroup_cpus = int(quota) / int(period)
    quota = probe.read("sys/fs/cgroup/cpu/cpu.cfs_quota_us")
    period = probe.read("sys/fs/cgroup/cpu/cpu.cfs_period_us")
    if facts.cgroup_cpus is None and quota and period and int(quota) > 0:
        facts.cgroup_cpus = int(quota) / int(period)


def read_android(probe: Probe, facts: Facts) -> None:
    """`getprop` prints "[key]: [value]"; /system/build.prop holds "key=value"."""
    props = {}
    getprop = probe.command("getprop")
    if getprop:
        props = dict(re.findall(r"^\[([^\]]+)\]: \[([^\]]*)\]", getprop, re.M))
    build_prop = probe.read("system/build.prop")
    if build_prop:
        props = {**dict(_kv_lines(build_prop, "=")), **props}
    if props.get("ro.build.version.sdk") or props.get("ro.build.version.release"):
        facts.android = True
        facts.android_model = props.get("ro.product.model", "")
    facts.termux = probe.exists("data/data/com.termux/files/usr") or "com.termux" in os.environ.get("PREFIX", "")


def read_macos(probe: Probe, facts: Facts) -> None:
    """`sysctl -a` lines "key: value": hw.memsize, machdep.cpu.brand_string, hw.perflevelN.physicalcpu."""
    text = probe.command("sysctl", "-a") if (not probe.live or platform.system() == "Darwin") else None
    if not text:
        return
    kv = dict(_kv_lines(text, ":"))
    brand = kv.get("machdep.cpu.brand_string", "")
    if "hw.memsize" in kv:
        facts.mem_total_bytes = int(kv["hw.memsize"])
    facts.cpu_model = facts.cpu_model or brand
    if brand.startswith("Apple"):
        facts.apple_chip = brand
        facts.arch = "aarch64"
    if "hw.perflevel0.physicalcpu" in kv:
        facts.big_cores = int(kv["hw.perflevel0.physicalcpu"])
        facts.little_cores = int(kv.get("hw.perflevel1.physicalcpu", 0))
    facts.logical_cpus = int(kv.get("hw.logicalcpu", facts.logical_cpus or 0))


def gather(root: Path = Path("/")) -> Facts:
    probe = Probe(root)
    facts = Facts()
    if probe.live:
        facts.arch = {"arm64": "aarch64", "AMD64": "x86_64"}.get(platform.machine(), platform.machine())
    cpuinfo = probe.read("proc/cpuinfo")
    if cpuinfo:
        parse_cpuinfo(cpuinfo, facts)
        read_intel_hybrid(probe, facts)
    meminfo = probe.read("proc/meminfo")
    facts.mem_total_bytes = parse_meminfo(meminfo) if meminfo else None
    facts.device_tree_model = (probe.read("proc/device-tree/model") or "").strip("\x00\n ")
    tegra = probe.read("etc/nv_tegra_release")
    if tegra:
        match = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", tegra)
        facts.l4t_release = f"{match.group(1)}.{match.group(2)}" if match else "0"
    read_cgroup(probe, facts)
    read_android(probe, facts)
    read_macos(probe, facts)
    return facts


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text))


def match_profile(profile: Profile, facts: Facts) -> str | None:
    """Why `profile` fits these facts (a sentence), or None when one of its conditions fails."""
    m, why = profile.match, []
    if m.arch:
        if facts.arch != m.arch:
            return None
        why.append(f"arch {facts.arch}")
    if m.cpu_flags:
        if not set(m.cpu_flags) <= set(facts.cpu_flags):
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


def default_threads(profile: Profile, facts: Facts) -> tuple[int, str]:
    """Big cores only (little cores slow llama.cpp's lock-step threads down), capped by a CPU quota."""
    threads, why = profile.runtime.threads, "the profile's default"
    if facts.big_cores:
        threads = facts.big_cores
        why = f"{facts.big_cores} big cores" + (
            f", {facts.little_cores} little cores left out" if facts.little_cores else ""
        )
    if facts.cgroup_cpus is not None and facts.cgroup_cpus < threads:
        threads = max(1, int(facts.cgroup_cpus))
        why += f"; container CPU quota {facts.cgroup_cpus:g}"
    return threads, why


def detect(root: Path = Path("/")) -> Detection:
    """The best matching profile for the device at `root` (the generic profile when nothing else fits)."""
    facts = gather(root)
    for profile in sorted(list_profiles(), key=lambda p: (p.match.priority, p.name)):
        why = match_profile(profile, facts)
        if why is not None:
            break
    budget, budget_why = effective_budget(profile, facts)
    threads, threads_why = default_threads(profile, facts)
    reasons = [
        f"profile {profile.name}: {why}",
        f"budget {budget / GIB:.2f} GiB: {budget_why}",
        f"threads {threads}: {threads_why}",
    ]
    return Detection(profile=profile, facts=facts, threads=threads, budget_bytes=budget, reasons=reasons)
