"""The one table of quantization types: every row can be planned and parsed for `convert`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge.errors import BadRequestError, UnknownTypeError
from profiles.plan.planner import LADDER, file_bytes, tensor_types
from profiles.plan.shape import read_model_shape
from profiles.plan.types import ALIASES, TYPES, lookup
from profiles.profile import list_profiles
from quantize.quantizer import parse_types

ROOT = Path(__file__).resolve().parents[2]
LLAMA_8B = Path(__file__).parent / "fixtures" / "configs" / "llama-3.1-8b.json"

# bits per weight as llama.cpp's tools/quantize/quantize.cpp prints them ("2.06 bpw quantization").
# Its IQ2_S figure (2.5) is the mix: that file type's default ggml type is IQ2_XS (2.31).
LLAMA_CPP_BPW = {"IQ2_XXS": 2.06, "IQ2_XS": 2.31, "IQ1_S": 1.56, "IQ1_M": 1.75, "IQ3_XXS": 3.06}
LLAMA_CPP_BPW |= {"IQ4_NL": 4.50, "IQ4_XS": 4.25}


@pytest.mark.parametrize("name", list(TYPES))
def test_every_type_is_planned_and_parsed_for_convert(name):
    qtype = TYPES[name]
    assert parse_types(name.lower(), have_imatrix=qtype.needs_imatrix) == [qtype]
    assert parse_types(f"gguf:{name}", have_imatrix=True) == [qtype]
    if qtype.needs_imatrix:
        with pytest.raises(BadRequestError, match="--imatrix-text"):
            parse_types(name)
    assert qtype.ftype.name in (f"MOSTLY_{name}", f"ALL_{name}")  # llama.cpp's own name for the file type
    shape = read_model_shape(LLAMA_8B)
    types = {q for _, q in tensor_types(shape, name)}
    assert qtype.ggml_type in types
    bits = file_bytes(shape, name) * 8 / shape.n_params
    assert qtype.bits_per_weight * 0.95 < bits < qtype.bits_per_weight + 1.5  # mixes add bits, never remove many


def test_bits_per_weight_match_llama_cpp():
    for name, bpw in LLAMA_CPP_BPW.items():
        assert TYPES[name].bits_per_weight == pytest.approx(bpw, abs=0.005), name
    assert [TYPES[n].bits_per_weight for n in ("F32", "F16", "BF16", "Q8_0", "Q4_0")] == [32, 16, 16, 8.5, 4.5]


def test_aliases_ladder_and_profiles_name_rows_of_the_table():
    assert {lookup(alias) for alias in ALIASES} == {TYPES[t] for t in ALIASES.values()}
    assert set(LADDER) <= set(TYPES)
    assert {t for p in list_profiles() for t in p.runtime.quant_types} <= set(TYPES)
    with pytest.raises(UnknownTypeError, match="IQ2_XXS"):
        lookup("Q4_K_X")


def test_readme_lists_the_table():
    readme = (ROOT / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith("Types:"))
    plain, weighted = (part.split() for part in re.findall(r"`([A-Z0-9_ ]+)`", line))
    assert plain == [t for t in TYPES if not TYPES[t].needs_imatrix]
    assert weighted == [t for t in TYPES if TYPES[t].needs_imatrix]
