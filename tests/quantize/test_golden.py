"""Golden hashes: sha256 of every metadata value and every tensor of converted tiny fixtures.

Any drift in conversion (names, layouts, metadata, vocabulary) shows as a one-line diff of
tests/quantize/golden/<kind>-<type>.json. Regenerate on purpose with
    EDGE_UPDATE_GOLDEN=1 .venv/bin/pytest tests/quantize/test_golden.py
and review the diff. The fixtures are seeded, so the hashes are stable on one torch version.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import gguf
import numpy as np
import pytest

from quantize.convert import convert

GOLDEN = Path(__file__).parent / "golden"
CASES = [("llama3", "f16"), ("llama3-tied", "f32"), ("llama2", "q4_0"), ("bert", "f16"), ("llama-unigram", "f32")]


def digest(path: Path) -> dict[str, dict[str, str]]:
    reader = gguf.GGUFReader(path)
    meta = {}
    for field in reader.fields.values():
        if field.name.startswith("GGUF."):
            continue
        value = field.contents()
        meta[field.name] = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
    tensors = {
        t.name: f"{t.tensor_type.name}{list(map(int, t.shape))}:"
        f"{hashlib.sha256(np.ascontiguousarray(t.data).tobytes()).hexdigest()[:16]}"
        for t in reader.tensors
    }
    return {"metadata": meta, "tensors": tensors}


@pytest.mark.parametrize("kind, qtype", CASES)
def test_golden(tiny_checkpoint, tmp_path, kind, qtype):
    path = convert(tiny_checkpoint(kind), qtype, tmp_path, name=kind, quiet=True)[0].path
    got = digest(path)
    golden = GOLDEN / f"{kind}-{qtype}.json"
    if os.environ.get("EDGE_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert golden.is_file(), f"no golden file {golden.name}; run with EDGE_UPDATE_GOLDEN=1"
    want = json.loads(golden.read_text())
    assert got["metadata"] == want["metadata"]
    assert got["tensors"] == want["tensors"]
