"""Reading a device: files under a root folder, and command output, both bounded.

The live device is root "/". Tests pass a recorded tree instead (tests/profiles/fixtures/devices):
its files are read the same way, and the output of a command (getprop, sysctl) is read from
`<root>/commands/<name>.txt` instead of running it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

MAX_READ = 1 << 20  # never read more than 1 MiB of any probed file


class Probe:
    """Reads files under `root`; runs (live root) or reads (recorded root) command output."""

    def __init__(self, root: Path = Path("/")):
        self.root = Path(root)
        self.live = self.root.resolve() == Path("/")

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    def read(self, rel: str) -> str | None:
        try:
            with open(self.path(rel), "rb") as fh:
                return fh.read(MAX_READ).decode("utf-8", "replace")
        except OSError:
            return None

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def command(self, name: str, *args: str) -> str | None:
        if not self.live:
            return self.read(f"commands/{name}.txt")
        try:
            out = subprocess.run([name, *args], capture_output=True, timeout=5, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout[:MAX_READ].decode("utf-8", "replace") if out.returncode == 0 else None


def kv_lines(text: str, sep: str) -> Iterator[tuple[str, str]]:
    """ "key: value" lines (or another separator), stripped; lines without it are skipped."""
    for line in text.splitlines():
        if sep in line:
            key, _, value = line.partition(sep)
            yield key.strip(), value.strip()
