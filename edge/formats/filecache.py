"""Facts computed from a model file, remembered across process starts while the file is unchanged.

`edge serve` validates the GGUF header (edge.formats.validate) and reads the model's shape for the planner
before it loads anything. Both read the whole vocabulary (hundreds of milliseconds for Gemma-3's
262k tokens) and both only depend on the file's bytes, so their results are kept in
`$EDGE_HOME/cache/files.json` under a key of (real path, size, mtime_ns, ctime_ns, inode): any
change to the file (even one that restores its mtime) changes ctime, and the work is done again.
A cache that cannot be read or written is ignored; results are never worse than without it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.config import edge_home
from edge.fsio import write_atomic

_lock = threading.Lock()
MAX_ENTRIES = 64  # kept small: one line per model file and kind


def _cache_file() -> Path:
    return edge_home() / "cache" / "files.json"


def _key(path: Path, kind: str) -> str:
    st = path.stat()
    return f"{kind}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"


def _load(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _store(file: Path, data: dict[str, Any]) -> None:
    try:
        write_atomic(file, json.dumps(data))
    except OSError:
        pass  # a read-only home (a hardened service) just recomputes next time


def remember(path: Path, kind: str, compute: Callable[[], Any]) -> Any:
    """`compute()` (JSON-serializable result) once per unchanged file; exceptions are not cached."""
    path = Path(path)
    key = _key(path, kind)
    file = _cache_file()
    with _lock:
        hit = _load(file).get(key)
    if hit is not None:
        return hit
    value = compute()
    with _lock:
        data = _load(file)
        data[key] = value
        if len(data) > MAX_ENTRIES:
            data = dict(list(data.items())[-MAX_ENTRIES:])
        _store(file, data)
    return value
