"""Atomic writes: a SIGKILL or Ctrl-C mid-write never leaves a file under the final name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from edge.errors import OutputExistsError
from edge.fsio import TMP_PREFIX, atomic_file
from quantize.gguf_out import OutTensor, write_gguf

F32 = gguf.GGMLQuantizationType.F32

# Writes 4 tensors with the real writer; the 3rd loader signals the parent and then blocks.
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import gguf, numpy as np
    from quantize.gguf_out import OutTensor, write_gguf

    out, marker = Path(sys.argv[1]), Path(sys.argv[2])
    def loader(i):
        def load():
            if i == 2:
                marker.write_text("mid-write")
                time.sleep(120)
            return np.full((256, 256), i, np.float32)   # (256, 256)
        return load
    tensors = [OutTensor(f"t{i}.weight", (256, 256), gguf.GGMLQuantizationType.F32, loader(i)) for i in range(4)]
    write_gguf(out, "llama", lambda w: None, tensors)
""")


def test_sigkill_mid_write_leaves_no_final_file(tmp_path):
    out, marker = tmp_path / "model-f32.gguf", tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(out), str(marker)], cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "the writer exited before reaching the middle of the file"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert len(partial) == 1 and partial[0].stat().st_size > 2 * 256 * 256 * 4  # it was mid-write


def test_interrupt_removes_temp_file(tmp_path):
    out = tmp_path / "m.gguf"

    def boom() -> np.ndarray:
        raise KeyboardInterrupt

    tensors = [
        OutTensor("a.weight", (4,), F32, lambda: np.zeros(4, np.float32)),
        OutTensor("b.weight", (4,), F32, boom),
    ]
    with pytest.raises(KeyboardInterrupt):
        write_gguf(out, "llama", lambda w: None, tensors)
    assert list(tmp_path.iterdir()) == []


def test_existing_file_refused_and_kept(tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="--force"):
        with atomic_file(out):
            pass
    assert out.read_bytes() == b"old"
    with atomic_file(out, force=True) as tmp:
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_written_file_reads_back(tmp_path):
    out = tmp_path / "m.gguf"
    a = np.arange(6, dtype=np.float32).reshape(2, 3)  # (2, 3)
    write_gguf(out, "llama", lambda w: w.add_uint32("x.y", 7), [OutTensor("a.weight", (2, 3), F32, lambda: a)])
    reader = gguf.GGUFReader(out)
    assert reader.fields["x.y"].contents() == 7
    np.testing.assert_array_equal(reader.tensors[0].data, a)


# -- ONNX folders -------------------------------------------------------------------------------------

# Exports a tiny checkpoint; writing the manifest (the last step) signals the parent and then blocks.
ONNX_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import quantize.onnx.export as export

    src, out, marker = map(Path, sys.argv[1:4])
    def stall(*args, **kw):
        marker.write_text("files written, not published")
        time.sleep(120)
    export.write_manifest = stall
    export.export_onnx(src, ["onnx:fp32"], out, quiet=True, name="m")
""")


def test_sigkill_mid_onnx_export_leaves_no_final_folder(tiny_checkpoint, tmp_path):
    pytest.importorskip("onnx")
    out, marker = tmp_path / "out", tmp_path / "marker"
    args = [sys.executable, "-c", ONNX_CHILD, str(tiny_checkpoint("llama3")), str(out), str(marker)]
    proc = subprocess.Popen(args, cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, "the export exited before its last step"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "m-onnx-fp32").exists()
    [partial] = [p for p in out.iterdir()]
    assert partial.name.startswith(TMP_PREFIX) and (partial / "model.onnx").is_file()


def test_interrupted_onnx_export_leaves_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    import quantize.onnx.export as export

    def interrupt(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "write_manifest", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export.export_onnx(tiny_checkpoint("llama3"), ["onnx:fp32"], tmp_path, quiet=True, name="m")
    assert list(tmp_path.iterdir()) == []
