"""Model store: names from files, tags and latest, aliases, bundled models, nothing outside the store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edge.errors import BadRequestError, ModelFormatError, ModelNotFoundError
from edge.formats.gguf import ArrayRef, read_gguf_meta
from edge.store import DEFAULT_NAME, ModelStore, bundled_models, canonical, name_from_file


@pytest.fixture
def home(tmp_path) -> Path:
    (tmp_path / "models").mkdir()
    return tmp_path


def _model(home: Path, filename: str, size: int = 16) -> Path:
    path = home / "models" / filename
    path.write_bytes(b"GGUF" + b"\0" * (size - 4))
    return path


def _store(home: Path, tmp_path_factory) -> ModelStore:
    return ModelStore(home, cache_dir=tmp_path_factory.getbasetemp() / "no-cache")


@pytest.mark.parametrize(
    "filename, name",
    [
        ("smollm2-135m-q4_1.gguf", "smollm2:135m-q4_1"),
        ("Llama-3.1-8B-Instruct-Q4_K_M.gguf", "llama:3.1-8b-instruct-q4_k_m"),
        ("mymodel.gguf", "mymodel:latest"),
        ("qwen2.5-7b-q8_0-00001-of-00003.gguf", "qwen2.5:7b-q8_0"),
        ("bad name.gguf", None),
        ("-x.gguf", None),
    ],
)
def test_names_derived_from_files(filename, name):
    assert name_from_file(filename) == name


def test_list_and_resolve_local_models(home, tmp_path_factory):
    a = _model(home, "tiny-q8_0.gguf", 32)
    _model(home, "tiny-f16.gguf")
    _model(home, "solo.gguf")
    _model(home, ".hidden-q4_0.gguf")
    (home / "models" / "notes.txt").write_text("not a model")
    store = _store(home, tmp_path_factory)
    local = {e.name: e for e in store.local()}
    assert sorted(local) == ["solo:latest", "tiny:f16", "tiny:q8_0"]
    entry = store.resolve("TINY:Q8_0")
    assert (entry.path, entry.size_bytes, entry.format, entry.bundled) == (a, 32, "gguf", False)
    assert store.resolve("solo").name == "solo:latest"


def test_latest_with_several_tags_is_ambiguous_and_says_which(home, tmp_path_factory):
    _model(home, "tiny-q8_0.gguf")
    _model(home, "tiny-f16.gguf")
    store = _store(home, tmp_path_factory)
    with pytest.raises(ModelNotFoundError, match="ambiguous.*tiny:f16, tiny:q8_0"):
        store.resolve("tiny")
    _model(home, "tiny-latest.gguf")
    assert store.resolve("tiny").name == "tiny:latest"


def test_unknown_name_lists_what_is_available(home, tmp_path_factory):
    _model(home, "tiny-q8_0.gguf")
    with pytest.raises(ModelNotFoundError, match=r"'nope:1b' not found. Available: .*tiny:q8_0") as e:
        _store(home, tmp_path_factory).resolve("nope:1b")
    assert e.value.http_status == 404


@pytest.mark.parametrize("suffix", ["toml", "json"])
def test_aliases_map_client_names_to_local_models(home, tmp_path_factory, suffix):
    _model(home, "tiny-q8_0.gguf")
    text = (
        '"llama3.1:8b" = "tiny:q8_0"\n"gpt-4o" = "llama3.1:8b"\n'
        if suffix == "toml"
        else json.dumps({"llama3.1:8b": "tiny:q8_0", "gpt-4o": "llama3.1:8b"})
    )
    (home / f"aliases.{suffix}").write_text(text)
    store = _store(home, tmp_path_factory)
    assert store.resolve("llama3.1:8b").name == "tiny:q8_0"
    assert store.resolve("gpt-4o").name == "tiny:q8_0"  # chains, and no tag means :latest on both sides
    assert {"llama3.1:8b", "gpt-4o:latest"} <= set(store.names())


def test_alias_loops_and_bad_alias_files_are_clear_errors(home, tmp_path_factory):
    store = _store(home, tmp_path_factory)
    (home / "aliases.toml").write_text('a = "b"\nb = "a"\n')
    with pytest.raises(BadRequestError, match="alias loop"):
        store.resolve("a")
    (home / "aliases.toml").write_text("this is = = not toml")
    with pytest.raises(BadRequestError, match="aliases file .* is invalid"):
        store.resolve("a")
    (home / "aliases.toml").write_text("[section]\nx = 1\n")
    with pytest.raises(BadRequestError, match="flat table"):
        store.resolve("a")


def test_alias_target_is_a_name_never_a_path(home, tmp_path_factory, tmp_path):
    outside = tmp_path / "outside-q4_0.gguf"
    outside.write_bytes(b"GGUF")
    (home / "aliases.toml").write_text(f'evil = "{outside}"\n')
    with pytest.raises(ModelNotFoundError):
        _store(home, tmp_path_factory).resolve("evil")


@pytest.mark.parametrize(
    "name",
    [
        "../outside-q4_0",
        "../outside-q4_0.gguf",
        "/etc/passwd",
        "models/../../outside-q4_0",
        "outside:q4_0/../../x",
        "..",
        "~root",
    ],
)
def test_names_never_resolve_outside_the_store(home, tmp_path_factory, name):
    (home / "outside-q4_0.gguf").write_bytes(b"GGUF")  # next to models/, not in it
    with pytest.raises(ModelNotFoundError):
        _store(home, tmp_path_factory).resolve(name)


def test_symlinks_leading_out_of_the_store_are_ignored(home, tmp_path_factory, tmp_path):
    target = tmp_path / "secret.gguf"
    target.write_bytes(b"GGUF")
    os.symlink(target, home / "models" / "leak-q4_0.gguf")
    os.symlink(home / "models" / "real-q4_0.gguf", home / "models" / "inside-q4_0.gguf")
    _model(home, "real-q4_0.gguf")
    store = _store(home, tmp_path_factory)
    assert sorted(e.name for e in store.local()) == ["inside:q4_0", "real:q4_0"]
    with pytest.raises(ModelNotFoundError):
        store.resolve("leak:q4_0")
    assert store.resolve("inside:q4_0").path.resolve() == (home / "models" / "real-q4_0.gguf")


@pytest.mark.parametrize("name", ["", "   ", "x" * 300, "tiny\x00:q8_0", "tiny\n"])
def test_unusable_names_are_bad_requests(name):
    with pytest.raises(BadRequestError):
        canonical(name)


def test_onnx_folders_are_listed(home, tmp_path_factory):
    folder = home / "models" / "smollm2-135m-int4"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"x" * 10)
    (folder / "genai_config.json").write_text("{}")
    (home / "models" / "empty-dir").mkdir()
    entry = _store(home, tmp_path_factory).resolve("smollm2:135m-int4")
    assert (entry.format, entry.path, entry.size_bytes) == ("onnx", folder, 12)


def test_bundled_models_resolve_and_smollm2_is_default(home, smollm2_path, tmp_path_factory):
    store = _store(home, tmp_path_factory)
    names = [e.name for e in store.list()]
    assert names == ["gemma3:270m-q4_k_m", "smollm2:135m-q4_1"]
    assert store.default().path == smollm2_path and store.default().name == DEFAULT_NAME
    for asked in ("smollm2", "smollm2:latest", "SmolLM2:135M-Q4_1"):
        assert store.resolve(asked).path == smollm2_path
    assert {"smollm2:latest", "gemma3:latest", "smollm2:135m-q4_1"} <= set(store.names())


def test_bundled_default_stays_latest_when_the_store_adds_a_tag(home, tmp_path_factory, smollm2_path):
    _model(home, "smollm2-1.7b-q4_k_m.gguf")
    store = _store(home, tmp_path_factory)
    assert store.resolve("smollm2").path == smollm2_path
    assert store.resolve("smollm2:1.7b-q4_k_m").bundled is False


def test_a_store_file_shadows_a_bundled_model_of_the_same_name(home, tmp_path_factory):
    mine = _model(home, "smollm2-135m-q4_1.gguf")
    assert _store(home, tmp_path_factory).resolve("smollm2:135m-q4_1").path == mine


def test_gemma3_is_assembled_once_into_the_cache_and_verified(gemma3_path, tmp_path):
    entry = next(e for e in bundled_models(gemma3_path.parent) if e.name == "gemma3:270m-q4_k_m")
    assert entry.path == gemma3_path and entry.size_bytes == gemma3_path.stat().st_size
    assert gemma3_path.read_bytes()[:4] == b"GGUF"
    assert not list(gemma3_path.parent.glob(".edge-tmp-*"))  # no temp file left behind
    listed = next(e for e in bundled_models(tmp_path / "fresh") if e.name.startswith("gemma3"))
    assert not listed.path.exists()  # listing never assembles


def test_gguf_meta_of_the_bundled_models(smollm2_path, gemma3_path):
    s = read_gguf_meta(smollm2_path, tensors=True)
    assert (s.architecture, s.quantization, s.size_label) == ("llama", "Q4_1", "135M")
    assert 130e6 < s.parameter_count < 140e6
    assert isinstance(s.kv["tokenizer.ggml.tokens"], ArrayRef) and s.kv["tokenizer.ggml.tokens"].count == 49152
    g = read_gguf_meta(gemma3_path)
    assert (g.architecture, g.quantization, g.chat_template) == ("gemma3", "Q4_K_M", None)


@pytest.mark.parametrize("cut", [0, 3, 4, 8, 16, 24, 30, 100, 5000, 1_000_000, 1_500_000])  # header: ~1.6 MB
def test_gguf_meta_rejects_truncated_headers(smollm2_path, tmp_path, cut):
    bad = tmp_path / "cut.gguf"
    with open(smollm2_path, "rb") as f:
        bad.write_bytes(f.read(cut))
    with pytest.raises(ModelFormatError):
        read_gguf_meta(bad, tensors=True)


@pytest.mark.parametrize("offset, value", [(4, 99), (16, 2**63), (8, 2**62), (24, 2**63)])
def test_gguf_meta_rejects_absurd_counts_and_lengths(smollm2_path, tmp_path, offset, value):
    data = bytearray(smollm2_path.read_bytes()[:1_000_000])
    width = 4 if offset == 4 else 8
    data[offset : offset + width] = value.to_bytes(width, "little")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError):
        read_gguf_meta(bad)
