"""Real chat templates of tool-calling families, read from the llama-cpp-python sdist at test time.

The sdist ships llama.cpp's `models/templates/*.jinja` (Llama 3.x, Qwen 2.5, Hermes, Mistral Nemo,
Phi-3.5, Gemma 2, ...). They are never copied into this repository: `template_dir()` finds an
sdist (EDGE_LLAMA_CPP_SDIST, a cached copy, or `pip download`) and extracts only the templates.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-tests"
MEMBER = "/vendor/llama.cpp/models/templates/"


def _find_sdist() -> tuple[Path | None, str]:
    given = os.environ.get("EDGE_LLAMA_CPP_SDIST")
    candidates = [given] if given else []
    candidates += [str(CACHE / SDIST), *glob.glob(f"/tmp/*/{SDIST}")]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c), ""
    CACHE.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    cmd += [f"llama-cpp-python=={VERSION}", "-d", str(CACHE)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"pip download failed: {exc}"
    if done.returncode != 0 or not (CACHE / SDIST).is_file():
        return None, f"pip download failed: {done.stderr.strip()[-300:]}"
    return CACHE / SDIST, ""


def template_dir() -> tuple[Path | None, str]:
    """(folder of *.jinja, "") or (None, why not)."""
    out = CACHE / f"templates-{VERSION}"
    if out.is_dir() and any(out.glob("*.jinja")):
        return out, ""
    sdist, why = _find_sdist()
    if sdist is None:
        return None, why
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        for m in tar.getmembers():
            if MEMBER in m.name and m.name.endswith(".jinja") and m.isfile():
                data = tar.extractfile(m)
                if data is not None:
                    (out / Path(m.name).name).write_bytes(data.read())
    return out, ""
