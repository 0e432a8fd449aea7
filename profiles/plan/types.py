"""The GGUF quantization types: one table, read by the planner and by the quantizer.

Every row can be written by `edge-quantize convert` (llama.cpp's `llama_model_quantize`, or our own
writer for the float types) and sized by the planner (profiles.plan.planner), so a type added here
is a type both accept. Each row names:

- the name users type ("Q4_K_M"; lower case and a `gguf:` prefix are accepted, see `lookup`);
- llama.cpp's file type (`llama_ftype`, what `llama_model_quantize` is asked for);
- the ggml type most tensors get (`llama_ftype_get_default_type` in src/llama-quant.cpp; the
  planner applies llama.cpp's per-tensor mix rules on top of it);
- whether llama.cpp refuses the type without an importance matrix (`tensor_requires_imatrix`).

Only gguf's constants are imported (edge.lightimport): no reader, writer or numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge.errors import UnknownTypeError
from edge.lightimport import gguf_constants

if TYPE_CHECKING:
    from gguf.constants import GGMLQuantizationType, LlamaFileType

gguf = gguf_constants()
F = gguf.LlamaFileType
T = gguf.GGMLQuantizationType
FLOAT_TYPES = (T.F32, T.F16, T.BF16)


@dataclass(frozen=True)
class QuantType:
    name: str  # user-facing, e.g. "Q4_K_M"
    ftype: LlamaFileType  # llama.cpp's file type: what llama_model_quantize is asked for, and general.file_type
    ggml_type: GGMLQuantizationType  # the type most tensors get; the mix rules change some (planner._mix_type)
    needs_imatrix: bool = False  # llama.cpp refuses it without an importance matrix

    @property
    def is_float(self) -> bool:
        """F32/F16/BF16: written directly by the converter, no quantizer involved."""
        return self.ggml_type in FLOAT_TYPES

    @property
    def float_type(self) -> GGMLQuantizationType | None:
        return self.ggml_type if self.is_float else None

    @property
    def bits_per_weight(self) -> float:
        """Nominal bits per weight of the default ggml type (block bytes x 8 / block values). A mix
        (_S/_M/_L, IQ) keeps some tensors at more bits: the planner sizes a file tensor by tensor."""
        block, size = gguf.GGML_QUANT_SIZES[self.ggml_type]
        return size * 8 / block

    @property
    def file_suffix(self) -> str:
        return self.name.lower()


_TABLE = (
    QuantType("F32", F.ALL_F32, T.F32),
    QuantType("F16", F.MOSTLY_F16, T.F16),
    QuantType("BF16", F.MOSTLY_BF16, T.BF16),
    QuantType("Q8_0", F.MOSTLY_Q8_0, T.Q8_0),
    QuantType("Q6_K", F.MOSTLY_Q6_K, T.Q6_K),
    QuantType("Q5_K_M", F.MOSTLY_Q5_K_M, T.Q5_K),
    QuantType("Q5_K_S", F.MOSTLY_Q5_K_S, T.Q5_K),
    QuantType("Q5_1", F.MOSTLY_Q5_1, T.Q5_1),
    QuantType("Q5_0", F.MOSTLY_Q5_0, T.Q5_0),
    QuantType("Q4_K_M", F.MOSTLY_Q4_K_M, T.Q4_K),
    QuantType("Q4_K_S", F.MOSTLY_Q4_K_S, T.Q4_K),
    QuantType("Q4_1", F.MOSTLY_Q4_1, T.Q4_1),
    QuantType("Q4_0", F.MOSTLY_Q4_0, T.Q4_0),
    QuantType("IQ4_NL", F.MOSTLY_IQ4_NL, T.IQ4_NL),
    QuantType("IQ4_XS", F.MOSTLY_IQ4_XS, T.IQ4_XS),
    QuantType("Q3_K_L", F.MOSTLY_Q3_K_L, T.Q3_K),
    QuantType("Q3_K_M", F.MOSTLY_Q3_K_M, T.Q3_K),
    QuantType("Q3_K_S", F.MOSTLY_Q3_K_S, T.Q3_K),
    QuantType("Q2_K", F.MOSTLY_Q2_K, T.Q2_K),
    QuantType("IQ3_XXS", F.MOSTLY_IQ3_XXS, T.IQ3_XXS, needs_imatrix=True),
    QuantType("Q2_K_S", F.MOSTLY_Q2_K_S, T.Q2_K, needs_imatrix=True),
    QuantType("IQ2_S", F.MOSTLY_IQ2_S, T.IQ2_XS, needs_imatrix=True),  # IQ2_XS blocks, IQ3_S where it matters
    QuantType("IQ2_XS", F.MOSTLY_IQ2_XS, T.IQ2_XS, needs_imatrix=True),
    QuantType("IQ2_XXS", F.MOSTLY_IQ2_XXS, T.IQ2_XXS, needs_imatrix=True),
    QuantType("IQ1_M", F.MOSTLY_IQ1_M, T.IQ1_M, needs_imatrix=True),
    QuantType("IQ1_S", F.MOSTLY_IQ1_S, T.IQ1_S, needs_imatrix=True),
)
TYPES: dict[str, QuantType] = {t.name: t for t in _TABLE}
ALIASES = {"Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q3_K": "Q3_K_M"}  # as llama-quantize accepts them


def names() -> str:
    """The type names, most bits first."""
    return ", ".join(TYPES)


def lookup(text: str) -> QuantType:
    """ "q4_k_m", "gguf:Q4_K_M", "q4_k" -> the row; UnknownTypeError lists the names."""
    name = text.strip().upper().removeprefix("GGUF:")
    name = ALIASES.get(name, name)
    if name not in TYPES:
        raise UnknownTypeError(f"unknown quantization type {text!r}; valid types: {names()}")
    return TYPES[name]
