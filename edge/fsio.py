"""Durable file output: atomic file and folder writes, fsync, sha256. The lowest layer (stdlib only).

Atomic means a reader (or the next boot after a power cut) sees either nothing or the whole
output under the final name, never a part of it:

- a file is written to a temp name in the same folder (so the rename stays on one filesystem),
  fsynced, renamed over the final name, and the folder is fsynced so the rename itself is durable;
- a folder is filled under a temp name, every file and folder in it is fsynced, then it is renamed
  into place the same way.

Temp names start with TMP_PREFIX; any exception, Ctrl-C included, removes them. Only a SIGKILL or
a power cut can leave one behind, never a partial output under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from edge.errors import OutputExistsError

TMP_PREFIX = ".edge-tmp-"
CHUNK = 1 << 20  # bytes read at a time when hashing


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of a file, read in CHUNK blocks; `progress(n)` after each block."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
            if progress:
                progress(len(block))
    return h.hexdigest()


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder opened read-only can be fsynced on Linux and macOS)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make the names in a folder durable (after a create, rename or unlink in it)."""
    fsync_path(path)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root`, `root` last."""
    for folder, dirs, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(Path(folder) / name)
        for name in dirs:
            fsync_path(Path(folder) / name)
    fsync_path(root)


def refuse_existing(path: Path, force: bool) -> None:
    if Path(path).exists() and not force:
        raise OutputExistsError(f"{path} already exists; use --force to overwrite it")


def temp_name(final: Path, tag: str = "") -> Path:
    """A fresh temp path beside `final` (same folder, so renaming it over `final` is atomic)."""
    final = Path(final)
    return final.parent / f"{TMP_PREFIX}{tag}{secrets.token_hex(4)}-{final.name}"


@contextlib.contextmanager
def atomic_file(final: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temp path beside `final` (created empty); on success fsync it and rename it to `final`."""
    final = Path(final)
    refuse_existing(final, force)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # mode as umask allows
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(final: Path, data: bytes | str, *, force: bool = True) -> Path:
    """Write `data` (str as UTF-8) to `final` atomically; replaces an existing file unless force=False."""
    with atomic_file(final, force=force) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(final)


@contextlib.contextmanager
def atomic_folder(final: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder beside `final`; on success fsync everything in it and rename it to `final`.

    With force, an existing folder at `final` is first renamed aside and removed once the new one is
    in place: `final` is briefly absent, never partial."""
    final = Path(final)
    if final.exists() and (not force or not final.is_dir()):
        refuse_existing(final, force)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        _replace_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_folder(tmp: Path, final: Path) -> None:
    """Rename the finished (fsynced) folder `tmp` to `final`, replacing a folder there; fsync the parent."""
    old = None
    if final.exists():
        old = temp_name(final, "old-")
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
