"""Hardware profiles: one frozen dataclass, loaded from the TOML files shipped in `profiles/data/`.

A profile is data about a device class (memory, bandwidth, cores, what to build, what to run).
Unknown keys are rejected on purpose: a typo in a profile must fail loudly, not fall back to a
default nobody chose. Figures and their sources live as comments in the TOML files.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

from edge.errors import BadRequestError, NotFoundError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

GIB = 1024**3


@dataclass(frozen=True)
class Memory:
    total_gib: float  # RAM of the device (unified with the GPU where there is one)
    budget_gib: float  # left for the model (weights + KV cache + compute buffers) after the OS
    bandwidth_gbs: float  # DRAM bandwidth, GB/s (10^9), the ceiling of token generation

    def __post_init__(self):
        if not 0 < self.budget_gib <= self.total_gib:
            raise ValueError(f"budget_gib {self.budget_gib} must be in (0, total_gib {self.total_gib}]")


@dataclass(frozen=True)
class Cpu:
    big_cores: int  # performance cores (x86: physical P-cores; ARM: not Cortex-A5x/A510/A520)
    little_cores: int = 0  # efficiency cores: left out of the default thread count
    isa: str = ""  # e.g. "x86-64-v3 (AVX2)", "armv8.2-a+dotprod"


@dataclass(frozen=True)
class Runtime:
    threads: int  # default generation threads: big cores only
    context: int  # upper bound of the automatic context choice (tokens)
    parallel: int  # parallel slots (sequences) the server runs
    quant_types: tuple[str, ...]  # preferred GGUF types, first that fits wins
    efficiency: float = 0.6  # measured t/s / (bandwidth / bytes per token), see ANCHORS.md
    headroom: float = 0.10  # fraction of the budget kept free (fragmentation, spikes)


@dataclass(frozen=True)
class Gpu:
    kind: str = "none"  # "none" | "cuda" | "metal"
    n_gpu_layers: int = 0  # llama.cpp layers to offload (999 = all)
    unified_memory: bool = False  # GPU allocations come out of the same RAM budget
    note: str = ""


@dataclass(frozen=True)
class Build:
    cmake_args: str  # CMAKE_ARGS for `pip install llama-cpp-python` on this device
    onnx_provider: str = "CPUExecutionProvider"  # preferred onnxruntime execution provider


@dataclass(frozen=True)
class Match:
    """What detection looks for; every field given must hold. Lower `priority` is tried first."""

    priority: int = 100
    device_tree: str = ""  # substring of /proc/device-tree/model
    jetson: bool | None = None  # /etc/nv_tegra_release present
    l4t_min: str = ""  # minimum L4T release "36.4.3" (Orin Nano Super mode ships with JetPack 6.2)
    android: bool | None = None
    apple: str = ""  # substring of sysctl machdep.cpu.brand_string, e.g. "Apple M2"
    cpu_flags: tuple[str, ...] = ()  # all of these x86 flags in /proc/cpuinfo
    arch: str = ""  # "x86_64" | "aarch64"
    min_mem_gib: float = 0.0  # board RAM (not a container limit) within [min, max)
    max_mem_gib: float = 0.0  # 0: no upper bound


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    memory: Memory
    cpu: Cpu
    runtime: Runtime
    gpu: Gpu = field(default_factory=Gpu)
    build: Build = field(default_factory=lambda: Build(cmake_args=""))
    match: Match = field(default_factory=Match)

    @property
    def budget_bytes(self) -> int:
        return int(self.memory.budget_gib * GIB)

    @property
    def os_reserve_gib(self) -> float:
        return self.memory.total_gib - self.memory.budget_gib

    @classmethod
    def from_dict(cls, name: str, data: dict) -> Profile:
        _reject_unknown(name, "", data, {"description", *_SECTIONS})
        kwargs = {"name": name, "description": data.get("description", name)}
        for key, klass in _SECTIONS.items():
            if key in data:
                kwargs[key] = _build(name, key, klass, data[key])
            elif key in ("memory", "cpu", "runtime"):
                raise BadRequestError(f"profile {name!r}: missing section [{key}]")
        return cls(**kwargs)


_SECTIONS = {"memory": Memory, "cpu": Cpu, "runtime": Runtime, "gpu": Gpu, "build": Build, "match": Match}


def _reject_unknown(profile: str, section: str, data: dict, allowed) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        where = f"[{section}]" if section else "top level"
        raise BadRequestError(f"profile {profile!r}: unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")


def _build(profile: str, section: str, klass, data: dict):
    if not isinstance(data, dict):
        raise BadRequestError(f"profile {profile!r}: [{section}] must be a table")
    names = {f.name for f in dataclasses.fields(klass)}
    _reject_unknown(profile, section, data, names)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return klass(**values)
    except (TypeError, ValueError) as exc:
        raise BadRequestError(f"profile {profile!r}: [{section}] {exc}") from exc


def _profile_files() -> dict[str, Path]:
    root = resources.files("profiles") / "data"
    return {p.name.removesuffix(".toml"): Path(str(p)) for p in root.iterdir() if p.name.endswith(".toml")}


def load_profile_file(path: Path) -> Profile:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise BadRequestError(f"profile file {path}: invalid TOML: {exc}") from exc
    return Profile.from_dict(Path(path).stem, data)


@cache
def list_profiles() -> tuple[Profile, ...]:
    """Every shipped profile, sorted by name."""
    return tuple(load_profile_file(p) for _, p in sorted(_profile_files().items()))


def get_profile(name: str) -> Profile:
    """A shipped profile by name, or a path to a TOML file; NotFoundError lists the names."""
    if name.endswith(".toml") and Path(name).is_file():
        return load_profile_file(Path(name))
    for profile in list_profiles():
        if profile.name == name:
            return profile
    names = ", ".join(p.name for p in list_profiles())
    raise NotFoundError(f"unknown profile {name!r}; available: {names} (or a path to a .toml file)")
