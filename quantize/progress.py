"""Progress display for edge-quantize: rich bars on stderr, or nothing with --quiet.

Every bar shows done/total, elapsed time and time remaining. Also routes llama.cpp's log while it
quantizes: the per-tensor lines ("[  12/ 272] blk.1.attn_q ...") advance a per-tensor bar, and the
per-tensor fallback warnings ("... not divisible by 256 ... -> falling back to q5_0") are counted
into a one-line summary (QuantLog) instead of flooding the terminal; other warnings and errors
are still printed.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def columns() -> tuple:
    """What every bar shows: spinner, description, bar, done/total, elapsed, time remaining."""
    return (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )


class Bars:
    """A rich Progress, or a no-op stand-in when quiet."""

    def __init__(self, quiet: bool, *, out: Console | None = None, get_time: Callable[[], float] | None = None):
        self.quiet = quiet
        self.console = out or console
        self._progress = (
            None if quiet else Progress(*columns(), console=self.console, transient=False, get_time=get_time)
        )

    def __enter__(self) -> Bars:
        if self._progress:
            self._progress.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress:
            self._progress.__exit__(exc_type, exc, tb)

    def add(self, description: str, total: int | None) -> TaskID | None:
        return self._progress.add_task(description, total=total) if self._progress else None

    def advance(self, task: TaskID | None, n: int = 1) -> None:
        if self._progress and task is not None:
            self._progress.advance(task, n)

    def update(self, task: TaskID | None, **kw: Any) -> None:
        if self._progress and task is not None:
            self._progress.update(task, **kw)

    def finish(self, task: TaskID | None) -> None:
        if self._progress and task is not None:
            t = self._progress.tasks[[x.id for x in self._progress.tasks].index(task)]
            self._progress.update(task, total=t.completed or 1, completed=t.completed or 1)

    def note(self, message: str) -> None:
        """A line above the bars; nothing with --quiet."""
        if not self.quiet:
            self.console.print(message, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """A warning that shows even with --quiet (quality or safety matters)."""
    console.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


# -- llama.cpp's quantizer log ------------------------------------------------------------------------


@dataclass(frozen=True)
class Fallback:
    """Tensors llama.cpp stored in another type than the one asked for: their rows (ncols) are not a
    multiple of that type's block size (SmolLM2's 576-wide rows and the 256-value K-quant blocks)."""

    tensors: int
    wanted: str  # "Q4_K": what the file type asked for this tensor
    used: str  # "Q5_0": what it got
    block: int  # 256: the wanted type's block size
    row_sizes: tuple[int, ...]  # (576,): the row lengths that did not divide

    def summary(self) -> str:
        rows = ", ".join(map(str, self.row_sizes))
        return (
            f"{self.tensors} tensor{'s' if self.tensors != 1 else ''} fell back to {self.used} "
            f"(instead of {self.wanted}): rows not a multiple of {self.block} ({rows} values)"
        )

    def to_json(self) -> dict:
        return {
            "tensors": self.tensors,
            "wanted": self.wanted,
            "used": self.used,
            "block": self.block,
            "row_sizes": list(self.row_sizes),
            "summary": self.summary(),
        }


# tensor_type_fallback() in llama.cpp's src/llama-quant.cpp, one line per tensor (sent in 2-3 pieces)
_FALLBACK = re.compile(
    r"warning:\s*(?P<tensor>\S+)\s+-\s+ncols\s+(?P<ncols>\d+)\s+not divisible by\s+(?P<block>\d+)"
    r"\s+\(required for type\s+(?P<wanted>\S+)\).*falling back to\s+(?P<used>\S+)"
)
_FALLBACK_TOTAL = re.compile(r"WARNING: \d+ of \d+ tensor\(s\) required fallback quantization")


class QuantLog:
    """What llama.cpp warned about during a quantization, with the per-tensor fallbacks counted."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, str, int, int]] = {}  # tensor -> (wanted, used, block, ncols)

    def consume(self, line: str) -> bool:
        """True when the line is a fallback warning (counted, not to be printed)."""
        m = _FALLBACK.search(line)
        if m:
            self._seen[m["tensor"]] = (m["wanted"].upper(), m["used"].upper(), int(m["block"]), int(m["ncols"]))
            return True
        return bool(_FALLBACK_TOTAL.search(line))

    def fallbacks(self) -> tuple[Fallback, ...]:
        groups: dict[tuple[str, str, int], list[int]] = defaultdict(list)
        for wanted, used, block, ncols in self._seen.values():
            groups[(wanted, used, block)].append(ncols)
        return tuple(
            Fallback(len(n), w, u, b, tuple(sorted(set(n))))
            for (w, u, b), n in sorted(groups.items(), key=lambda kv: -len(kv[1]))
        )


# enum ggml_log_level in the vendored ggml.h (llama_cpp/_logger.py's comment is out of date)
_WARN, _ERROR, _CONT = 3, 4, 5
_TENSOR_LINE = re.compile(rb"\[\s*(\d+)/\s*(\d+)\]")


@contextlib.contextmanager
def llama_log_to(bars: Bars, task: TaskID | None) -> Iterator[QuantLog]:
    """While active, llama.cpp's per-tensor quantize lines drive `task`, its fallback warnings go to
    the yielded QuantLog, and its other warnings and errors go to stderr, a line at a time."""
    import llama_cpp

    llama_cpp.llama_log_set  # noqa: B018 - runs the real __init__ if edge.lightimport's stand-in is there;
    import llama_cpp._logger as default_logger  # importing _logger first would import it circularly

    log = QuantLog()
    last, pending = [0], [""]

    def flush_line(line: str) -> None:
        if line.strip() and not log.consume(line):
            print(line, file=sys.stderr)

    @llama_cpp.llama_log_callback
    def on_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        if level != _CONT:
            last[0] = level
        m = _TENSOR_LINE.search(text or b"")
        if m:
            bars.update(task, completed=int(m.group(1)), total=int(m.group(2)))
        elif last[0] in (_WARN, _ERROR) and text:
            *lines, pending[0] = (pending[0] + text.decode("utf-8", "replace")).split("\n")
            for line in lines:
                flush_line(line)

    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    try:
        yield log
    finally:
        llama_cpp.llama_log_set(default_logger.llama_log_callback, ctypes.c_void_p(0))
        flush_line(pending[0])
