"""The three servers the serve benchmark compares, started as a user would start them.

Each `ServerKind` knows its command line, how to tell it is ready, and which extra request
fields make it generate exactly max_tokens (llama-server: ignore_eos). Processes write their
logs to files (a full pipe would stall them) and are stopped by their own pid.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import common
import httpx

THREADS = 2


@dataclass
class ServerKind:
    name: str
    ready_path: str  # GET answering 200 once the model is loaded
    extra: dict = field(default_factory=dict)  # request fields that pin the token count

    def command(self, model: Path, port: int, parallel: int, ctx: int) -> list[str]:
        raise NotImplementedError

    def model_id(self, model: Path, listed: str) -> str:
        """The `model` field requests carry: by default what /v1/models lists first."""
        return listed


class LlamaServer(ServerKind):
    def command(self, model, port, parallel, ctx):
        # -c is the TOTAL context split over the slots: ctx per slot, like ours.
        return [
            str(common.anchor_binary("llama-server")),
            "-m",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "-t",
            str(THREADS),
            "-c",
            str(ctx * parallel),
            "-np",
            str(parallel),
            "--no-webui",
        ]


class LlamaCppPythonServer(ServerKind):
    def command(self, model, port, parallel, ctx):
        # No slots: it serializes requests, `parallel` cannot be honoured.
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_threads",
            str(THREADS),
            "--n_threads_batch",
            str(THREADS),
            "--n_ctx",
            str(ctx),
        ]


class EdgeServer(ServerKind):
    def model_id(self, model, listed):
        # `edge serve MODEL` lists the whole store in /v1/models (bundled models included, in name
        # order); the file it serves answers to its name without the extension.
        return model.stem

    def launcher(self) -> list[str]:
        return [str(common.venv_script("edge"))]

    def command(self, model, port, parallel, ctx):
        cmd = [
            *self.launcher(),
            "serve",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--parallel",
            str(parallel),
            "--ctx",
            str(ctx),
        ]
        return cmd + (["--threads", str(THREADS)] if _edge_has_threads_flag() else [])


_EDGE_HELP: str | None = None


def _edge_has_threads_flag() -> bool:
    global _EDGE_HELP
    if _EDGE_HELP is None:
        _EDGE_HELP = subprocess.run(
            [str(common.venv_script("edge")), "serve", "--help"], capture_output=True, text=True
        ).stdout
    return "--threads" in _EDGE_HELP


@dataclass
class EdgeAtRevision(EdgeServer):
    """`edge serve` as it was at a git revision: a worktree of that commit first on PYTHONPATH, run by
    this environment's python, so the same interpreter and llama.cpp serve both sides of an A/B."""

    tree: Path = Path()

    def launcher(self) -> list[str]:
        return [sys.executable, "-c", "import sys; from edge.cli import main; sys.argv[0] = 'edge'; sys.exit(main())"]

    def env(self) -> dict:
        return dict(_env(), PYTHONPATH=str(self.tree))


def add_revision(rev: str) -> str:
    """Register `ours@REV` (a detached worktree of REV under the bench folder) and return its name."""
    root = Path(__file__).resolve().parent.parent
    sha = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", rev], capture_output=True, text=True, check=True
    )
    sha = sha.stdout.strip()
    tree = common.work_dir() / "revisions" / sha
    if not tree.is_dir():
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(tree), sha], check=True)
    name = f"ours@{sha}"
    KINDS[name] = EdgeAtRevision(name, "/health", {"ignore_eos": True}, tree=tree)
    return name


KINDS = {
    "ours": EdgeServer("ours", "/health", {"ignore_eos": True}),
    "llama-server": LlamaServer("llama-server", "/health", {"ignore_eos": True}),
    # No ignore_eos there; min_tokens (a Python logits processor, part of its cost) pins the count.
    "llama_cpp.server": LlamaCppPythonServer("llama_cpp.server", "/v1/models", {"min_tokens": 128}),
}


def available_kinds() -> list[str]:
    """The servers that can run here; a missing one is reported, not silently dropped."""
    kinds = []
    for name in KINDS:
        why = _missing(name)
        if why:
            common.console.log(f"[yellow]skipping {name}: {why}[/]")
        else:
            kinds.append(name)
    return kinds


def _missing(name: str) -> str | None:
    if name.startswith("ours@"):
        return None
    if name == "llama-server":
        return None if common.anchor_binary("llama-server", required=False) else "not built (python bench/anchors.py)"
    if name == "llama_cpp.server":
        probe = subprocess.run([sys.executable, "-c", "import llama_cpp.server.app"], capture_output=True, text=True)
        return None if probe.returncode == 0 else "extras missing: pip install 'llama-cpp-python[server]==0.3.36'"
    edge = Path(sys.executable).parent / "edge"
    if not edge.is_file():
        return "edge not installed"
    probe = subprocess.run([str(edge), "serve", "--help"], capture_output=True, text=True)
    return None if probe.returncode == 0 else "`edge serve` not available yet"


@dataclass
class Running:
    kind: ServerKind
    proc: subprocess.Popen
    base: str
    started: float  # perf_counter at Popen
    ready_at: float = 0.0
    model_id: str = ""
    log: Path | None = None

    def url(self, path: str) -> str:
        return self.base + path


def start(
    kind_name: str | ServerKind,
    model: Path,
    *,
    parallel: int = 1,
    ctx: int = 2048,
    timeout: float = 120,
    env: dict | None = None,
) -> Running:
    """Start a server (a name in KINDS, or a kind) and return once it answers ready (polled every 5 ms).
    `env`: extra environment variables (e.g. PYTHONPATH to run `edge serve` from another tree)."""
    kind = KINDS[kind_name] if isinstance(kind_name, str) else kind_name
    port = common.free_port()
    log = common.work_dir() / "logs" / f"{kind.name.replace(' ', '_')}-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = kind.command(model, port, parallel, ctx)
    with open(log, "wb") as out:
        started = time.perf_counter()
        base = kind.env() if isinstance(kind, EdgeAtRevision) else _env()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**base, **(env or {})})
    run = Running(kind, proc, f"http://127.0.0.1:{port}", started, log=log)
    try:
        _wait_ready(run, timeout)
    except BaseException:
        common.stop(proc)
        raise
    run.model_id = kind.model_id(model, run.model_id)
    return run


def _env() -> dict:
    import os

    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


def _wait_ready(run: Running, timeout: float) -> None:
    deadline = run.started + timeout
    with httpx.Client(timeout=2.0) as client:
        while time.perf_counter() < deadline:
            if run.proc.poll() is not None:
                tail = run.log.read_text(errors="replace")[-3000:] if run.log else ""
                raise SystemExit(f"{run.kind.name} exited with {run.proc.returncode}:\n{tail}")
            try:
                if client.get(run.url(run.kind.ready_path)).status_code == 200:
                    run.ready_at = time.perf_counter()
                    run.model_id = _model_id(client, run)
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.005)
    raise SystemExit(f"{run.kind.name} not ready after {timeout:.0f} s (log: {run.log})")


def _model_id(client: httpx.Client, run: Running) -> str:
    r = client.get(run.url("/v1/models"))
    data = (r.json().get("data") or [{}]) if r.status_code == 200 else [{}]
    return data[0].get("id", "")
