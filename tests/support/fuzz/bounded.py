"""Run edge.formats.validate.validate_gguf (or validate_gguf_adapter) on many files in
ONE child process under resource limits. Given BASE (a GGUF model), the files are LoRA adapters checked
against it, as the server checks an adapter before llama.cpp loads it.

    python -m tests.support.fuzz.bounded LIST_FILE [BASE]  (one path a line) -> one JSON line per file:
    {"path": ..., "result": "ok" | "ModelFormatError" | "<other exception type>", "message": ..., "seconds": ...}

The child caps its address space (RLIMIT_AS) and CPU time, so a case that allocates by a length
field or loops dies visibly instead of taking the machine down; `run_bounded` reports a child that
died, and on which file, as a result of its own ("died: ...").
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

AS_LIMIT = 3 << 30  # bytes of address space: mmap of the 250 MB Gemma file + Python + numpy fit well inside
CPU_LIMIT = 240  # seconds for the whole batch


def run_bounded(paths: list[Path], work: Path, timeout: float = 300, *, base: Path | None = None) -> dict[str, dict]:
    """path -> result dict (see the module docstring); given `base`, the files are LoRA adapters for it."""
    listing = work / "cases.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    cmd = [sys.executable, "-m", "tests.support.fuzz.bounded", str(listing)] + ([str(base)] if base else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).resolve().parents[3])
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            results[r["path"]] = r
    if proc.returncode != 0:
        last = next((str(p) for p in paths if str(p) not in results), "?")
        results[last] = {"path": last, "result": f"died: exit {proc.returncode}", "message": proc.stderr[-2000:]}
    return results


def _main(listing: str, base: str | None = None) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT, CPU_LIMIT))
    from edge.errors import ModelFormatError
    from edge.formats.validate import validate_gguf, validate_gguf_adapter

    def validate(path: Path) -> object:
        return validate_gguf(path) if base is None else validate_gguf_adapter(path, Path(base))

    for path in Path(listing).read_text().splitlines():
        t = time.perf_counter()
        try:
            validate(Path(path))
            result, message = "ok", ""
        except ModelFormatError as e:
            result, message = "ModelFormatError", e.message
        except Exception as e:  # reported, and the test fails on it
            result, message = type(e).__name__, str(e)
        print(
            json.dumps({"path": path, "result": result, "message": message, "seconds": time.perf_counter() - t}),
            flush=True,
        )
    os._exit(0)


if __name__ == "__main__":
    _main(*sys.argv[1:3])
