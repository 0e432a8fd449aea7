"""edge.formats.filecache: a result is reused while the file is unchanged, recomputed when it changes, and an
exception (a refused file) is never remembered."""

from __future__ import annotations

import os

import pytest

from edge.errors import ModelFormatError
from edge.formats.filecache import remember


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_HOME", str(tmp_path / "home"))


def test_reused_while_unchanged_recomputed_after_a_change(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 60)
    calls = []
    assert remember(f, "k", lambda: calls.append(1) or {"n": len(calls)}) == {"n": 1}
    assert remember(f, "k", lambda: calls.append(1) or {"n": len(calls)}) == {"n": 1}
    assert len(calls) == 1
    st = f.stat()
    with f.open("r+b") as fh:  # same size, mtime restored: ctime still moves
        fh.seek(10)
        fh.write(b"x")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert remember(f, "k", lambda: calls.append(1) or {"n": len(calls)}) == {"n": 2}


def test_a_refusal_is_not_remembered(tmp_path):
    f = tmp_path / "bad.gguf"
    f.write_bytes(b"nope")

    def refuse():
        raise ModelFormatError("bad")

    for _ in range(2):
        with pytest.raises(ModelFormatError):
            remember(f, "validated", refuse)


def test_an_unwritable_cache_only_costs_time(tmp_path, monkeypatch):
    home = tmp_path / "ro"
    home.mkdir()
    (home / "cache").write_text("not a folder")  # mkdir of cache/ fails
    monkeypatch.setenv("EDGE_HOME", str(home))
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert remember(f, "k", lambda: [1]) == [1]
    assert remember(f, "k", lambda: [2]) == [2]


def test_serve_planning_and_validation_use_it(smollm2_path, tmp_path):
    from edge.engine import open_engine
    from edge.formats.filecache import _cache_file
    from profiles.plan.shape import read_model_shape, shape_from_gguf

    assert read_model_shape(smollm2_path) == shape_from_gguf(smollm2_path)  # cached copy equals the real read
    assert read_model_shape(smollm2_path) == shape_from_gguf(smollm2_path)
    engine = open_engine(smollm2_path, name="s", n_ctx=256, n_threads=1)
    engine.close()
    kinds = {k.split("|")[0] for k in __import__("json").loads(_cache_file().read_text())}
    assert kinds == {"shape", "validated"}
