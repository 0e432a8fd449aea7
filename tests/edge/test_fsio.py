"""edge.fsio: atomic file and folder writes, sha256, and the one EDGE_HOME lookup."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edge.config import edge_home
from edge.errors import OutputExistsError
from edge.fsio import TMP_PREFIX, atomic_folder, sha256_file, write_atomic


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path):
    out = tmp_path / "sub" / "a.json"
    write_atomic(out, "one")
    write_atomic(out, b"two")
    assert out.read_bytes() == b"two"
    with pytest.raises(OutputExistsError, match="--force"):
        write_atomic(out, "three", force=False)
    assert out.read_bytes() == b"two" and [p.name for p in out.parent.iterdir()] == ["a.json"]


def test_sha256_file_matches_hashlib_and_reports_progress(tmp_path):
    data = bytes(range(256)) * 5000  # > one read block
    (tmp_path / "f").write_bytes(data)
    seen: list[int] = []
    assert sha256_file(tmp_path / "f", seen.append) == hashlib.sha256(data).hexdigest()
    assert sum(seen) == len(data)


def test_atomic_folder_publishes_whole_or_nothing(tmp_path):
    final = tmp_path / "model"
    with atomic_folder(final) as tmp:
        assert tmp.name.startswith(TMP_PREFIX) and not final.exists()
        (tmp / "sub").mkdir()
        (tmp / "sub" / "w.bin").write_bytes(b"w")
        (tmp / "m.json").write_text("{}")
    assert sorted(str(p.relative_to(final)) for p in final.rglob("*")) == ["m.json", "sub", "sub/w.bin"]

    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(final, force=True) as tmp:
            (tmp / "m.json").write_text("half")
            raise KeyboardInterrupt
    assert (final / "m.json").read_text() == "{}"  # the old folder is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["model"]

    with pytest.raises(OutputExistsError):
        with atomic_folder(final):
            pass
    with atomic_folder(final, force=True) as tmp:
        (tmp / "new").write_text("x")
    assert [p.name for p in final.iterdir()] == ["new"] and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_edge_home_from_environment_else_dot_edge(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGE_HOME", str(tmp_path))
    assert edge_home() == tmp_path
    assert edge_home({"EDGE_HOME": "~/x"}) == Path.home() / "x"
    assert edge_home({}) == Path.home() / ".edge"
