"""Progress display for edge-quantize: rich bars on stderr, or nothing with --quiet.

Also routes llama.cpp's log while it quantizes: the per-tensor lines ("[  12/ 272] blk.1.attn_q ...")
advance a per-tensor bar instead of flooding the terminal; errors are still printed.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import sys
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


class Bars:
    """A rich Progress, or a no-op stand-in when quiet."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self._progress = None if quiet else Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console, transient=False)

    def __enter__(self) -> "Bars":
        if self._progress:
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress:
            self._progress.__exit__(*exc)

    def add(self, description: str, total: int | None) -> int | None:
        return self._progress.add_task(description, total=total) if self._progress else None

    def advance(self, task: int | None, n: int = 1) -> None:
        if self._progress and task is not None:
            self._progress.advance(task, n)

    def update(self, task: int | None, **kw: object) -> None:
        if self._progress and task is not None:
            self._progress.update(task, **kw)

    def finish(self, task: int | None) -> None:
        if self._progress and task is not None:
            t = self._progress.tasks[[x.id for x in self._progress.tasks].index(task)]
            self._progress.update(task, total=t.completed or 1, completed=t.completed or 1)


def warn(message: str) -> None:
    """A warning that shows even with --quiet (quality or safety matters)."""
    console.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


# enum ggml_log_level in the vendored ggml.h (llama_cpp/_logger.py's comment is out of date)
_WARN, _ERROR, _CONT = 3, 4, 5
_TENSOR_LINE = re.compile(rb"\[\s*(\d+)/\s*(\d+)\]")


@contextlib.contextmanager
def llama_log_to(bars: Bars, task: int | None) -> Iterator[None]:
    """While active, llama.cpp's per-tensor quantize lines drive `task`; errors go to stderr."""
    import llama_cpp
    import llama_cpp._logger as default_logger

    last = [0]

    @llama_cpp.llama_log_callback
    def on_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        if level != _CONT:
            last[0] = level
        m = _TENSOR_LINE.search(text or b"")
        if m:
            bars.update(task, completed=int(m.group(1)), total=int(m.group(2)))
        elif last[0] in (_WARN, _ERROR) and text:
            print(text.decode("utf-8", "replace"), end="", file=sys.stderr)

    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(default_logger.llama_log_callback, ctypes.c_void_p(0))
