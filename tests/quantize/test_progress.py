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
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())  # drop colours and cursor moves


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


# -- llama.cpp's per-tensor fallback warnings ------------------------------------------------------------


def test_quant_log_counts_fallbacks_by_type_and_keeps_other_warnings():
    log = progress_mod.QuantLog()
    lines = [
        "warning: blk.0.attn_q.weight                  - ncols    576 not divisible by 256 (required for type    q4_K)"
        " -> falling back to    q5_0",
        "warning: blk.0.attn_v.weight                  - ncols    576 not divisible by 256 (required for type    q6_K)"
        " -> falling back to    q8_0",
        "warning: blk.1.attn_q.weight                  - ncols    640 not divisible by 256 (required for type    q4_K)"
        " -> falling back to    q5_0",
        "llama_model_quantize_impl: WARNING: 3 of 272 tensor(s) required fallback quantization",
    ]
    assert all(log.consume(line) for line in lines)
    assert not log.consume("llama_model_loader: some other warning")
    first, second = log.fallbacks()
    assert (first.tensors, first.wanted, first.used, first.block, first.row_sizes) == (
        2,
        "Q4_K",
        "Q5_0",
        256,
        (576, 640),
    )
    assert (
        first.summary() == "2 tensors fell back to Q5_0 (instead of Q4_K): rows not a multiple of 256 (576, 640 values)"
    )
    assert second.summary() == "1 tensor fell back to Q8_0 (instead of Q6_K): rows not a multiple of 256 (576 values)"


def _block_types_in(path) -> dict[str, int]:
    """Tensor types in the layers of a GGUF file (token_embd is left out: llama.cpp picks Q8_0 for
    SmolLM2's tied embedding on purpose, not as a fallback)."""
    import gguf

    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        if t.name.startswith("blk."):
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("quiet", [True, False])
def test_k_quant_fallbacks_are_summarised_once_not_flooded(smollm2_path, tmp_path, capfd, quiet):
    """SmolLM2's rows are 576 wide, not a multiple of the K-quants' 256-value blocks: llama.cpp stores
    180 of its tensors in Q5_0/Q8_0 and warns once per tensor. The process's real stderr gets none of
    those lines; the summary comes once per fallback type (nothing with --quiet), and its counts are the
    tensors of those types in the written file."""
    (result,) = convert(smollm2_path, "q4_k_m", tmp_path, quiet=quiet)
    err = capfd.readouterr().err
    assert "falling back" not in err and "not divisible" not in err and "required fallback" not in err
    in_file = _block_types_in(result.path)
    assert {(f.used, f.tensors) for f in result.fallbacks} == {("Q5_0", in_file["Q5_0"]), ("Q8_0", in_file["Q8_0"])}
    assert sum(f.tensors for f in result.fallbacks) == 180  # llama.cpp: "180 of 272 tensor(s)"
    assert all(f.block == 256 and f.row_sizes == (576,) for f in result.fallbacks)
    summaries = [f"Q4_K_M: {f.summary()}" for f in result.fallbacks]
    for line in summaries:
        assert err.count(line) == (0 if quiet else 1), err[-2000:]
    assert ("fell back" in err) is not quiet


def test_llama_log_capture_works_after_the_runtime_imported_llama_cpp_lightly():
    """The server imports llama_cpp's bindings without its __init__ (edge.lightimport); a quantize in the
    same process (the ladder, the tests) then imported llama_cpp._logger circularly and failed."""
    import subprocess
    import sys

    code = (
        "from edge.lightimport import llama_module\n"
        "llama_module('llama_cpp')\n"
        "from quantize.progress import Bars, llama_log_to\n"
        "with llama_log_to(Bars(True), None):\n"
        "    pass\n"
        "print('captured')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "captured" in out.stdout, out.stderr[-2000:]
