"""Every long step of edge-quantize shows a bar with done/total, elapsed time and time remaining.

Rendered to a rich Console on a StringIO (a terminal 120 columns wide) and read back as a user sees it.
"""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console
from rich.progress import TimeRemainingColumn

import quantize.progress as progress_mod
from quantize.convert import convert
from quantize.progress import Bars


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=120), buf


def _plain(buf: io.StringIO) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())   # drop colours and cursor moves


def test_every_bar_has_a_time_remaining_column():
    assert any(isinstance(c, TimeRemainingColumn) for c in progress_mod.columns())


def test_a_bar_prints_the_time_remaining_from_its_speed():
    """2 done at 1 s, 4 at 2 s: 2/s, 6 left, 3 s remain (elapsed is 0:00:02: 0:00:03 can only be the estimate)."""
    now = [0.0]
    out, buf = _console()
    with Bars(False, out=out, get_time=lambda: now[0]) as bars:
        task = bars.add("eval Q4_K_M", total=10)
        now[0] = 1.0
        bars.advance(task, 2)
        now[0] = 2.0
        bars.advance(task, 2)
    text = _plain(buf)
    assert "eval Q4_K_M" in text and "4/10" in text
    assert "0:00:02 eta 0:00:03" in text


def test_quiet_prints_nothing():
    out, buf = _console()
    with Bars(True, out=out) as bars:
        bars.advance(bars.add("x", total=3))
        bars.note("a note")
    assert buf.getvalue() == ""


@pytest.mark.slow
def test_convert_shows_per_tensor_and_per_type_bars_with_time_remaining(smollm2_path, tmp_path, monkeypatch):
    """A real requantization (SmolLM2, 272 tensors) to two types: one bar per type driven by llama.cpp's
    per-tensor log, and one over the types, each ending at its total with an eta column."""
    out, buf = _console()
    monkeypatch.setattr(progress_mod, "console", out)
    convert(smollm2_path, "q8_0,q4_0", tmp_path)
    text = _plain(buf)
    for bar in ("quantize -> Q8_0", "quantize -> Q4_0", "2 types"):
        line = [ln for ln in text.splitlines() if bar in ln][-1]
        assert re.search(r"(272/272|2/2)\s+\d:\d\d:\d\d eta \d:\d\d:\d\d", line), line
