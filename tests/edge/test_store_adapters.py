"""Adapter names in the store: `model+adapter[@scale]`, listed per architecture, refused on ONNX models."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from edge.errors import BadRequestError, ModelNotFoundError
from edge.store import ModelStore, canonical


def _gguf(path: Path, arch: str, adapter: bool = False) -> Path:
    w = gguf.GGUFWriter(path, arch)
    if adapter:
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_tensor("x", np.zeros((4,), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def store(tmp_path) -> ModelStore:
    models, adapters = tmp_path / "models", tmp_path / "adapters"
    models.mkdir()
    adapters.mkdir()
    _gguf(models / "tiny-llama.gguf", "llama")
    _gguf(models / "tiny-gemma.gguf", "gemma3")
    (models / "tiny-onnx").mkdir()
    (models / "tiny-onnx" / "model.onnx").write_bytes(b"x")
    _gguf(adapters / "Desk.gguf", "llama", adapter=True)
    return ModelStore(tmp_path, cache_dir=tmp_path / "cache")


def test_adapter_names_are_listed_for_models_of_its_architecture(store):
    names = [e.name for e in store.with_adapters(store.list())]
    assert "tiny:llama+desk" in names  # (and the bundled SmolLM2, a llama too)
    assert not any(n.startswith(("tiny:gemma", "tiny:onnx")) for n in names)


def test_model_plus_adapter_resolves_with_its_scale(store, tmp_path):
    e = store.resolve("Tiny:Llama+desk@0.5")
    assert (e.name, e.path.name, e.adapter, e.adapter_scale, e.base) == (
        "tiny:llama+desk@0.5",
        "tiny-llama.gguf",
        tmp_path / "adapters" / "Desk.gguf",
        0.5,
        "tiny:llama",
    )
    assert store.resolve("tiny:llama+desk").adapter_scale == 1.0
    assert canonical("smollm2+desk") == "smollm2:latest+desk"


def test_alias_can_fix_base_adapter_and_scale(store, tmp_path):
    (tmp_path / "aliases.toml").write_text('"support" = "tiny:llama+desk@0.8"\n')
    e = store.resolve("support")
    assert (e.base, e.adapter_scale) == ("tiny:llama", 0.8)


def test_aliases_are_listed_under_their_own_names_with_what_they_fix(store, tmp_path):
    (tmp_path / "aliases.toml").write_text(
        '"support" = "tiny:llama+desk@0.8"\n"gpt-4o" = "tiny:gemma"\n'
        '"gone" = "tiny:nothing"\n"odd" = "tiny:llama+nope"\n"loop" = "loop2"\n"loop2" = "loop"\n'
    )
    listed = {e.name: e for e in store.alias_entries(store.list())}
    assert set(listed) == {"support:latest", "gpt-4o:latest"}  # missing targets and loops are left out
    support = listed["support:latest"]
    assert (support.base, support.adapter, support.adapter_scale) == (
        "tiny:llama",
        tmp_path / "adapters" / "Desk.gguf",
        0.8,
    )
    assert listed["gpt-4o:latest"].path == store.resolve("tiny:gemma").path and listed["gpt-4o:latest"].adapter is None
    with pytest.raises(ModelNotFoundError):
        store.resolve("gone")  # asking for a left-out alias still says why


def test_bad_adapter_names_are_clear_errors(store):
    with pytest.raises(ModelNotFoundError, match="no LoRA adapter 'nope'.*adapters: desk"):
        store.resolve("tiny:llama+nope")
    with pytest.raises(BadRequestError, match="not a number"):
        store.resolve("tiny:llama+desk@lots")
    with pytest.raises(BadRequestError, match="ONNX model: LoRA adapters apply to GGUF models only"):
        store.resolve("tiny:onnx+desk")
