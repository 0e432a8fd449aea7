"""Key/value rules on top of edge.formats.gguf's reader: the value types llama.cpp insists on.

The reader already applies ggml's structural rules (no empty or duplicate keys, known value types,
no nested arrays, general.alignment a u32 power of two). llama.cpp's GGUFMeta also refuses a known
key holding another value type than the one it reads; those keys are listed here.
"""

from __future__ import annotations

from edge.errors import ModelFormatError
from edge.formats.gguf import GGUFMeta, ValueType
from edge.lightimport import gguf_constants

gguf = gguf_constants()  # the enums and tables only: no reader, writer or numpy (edge.lightimport)
VT = ValueType

# Keys llama.cpp reads with a fixed type (its GGUFMeta refuses any other): "{arch}" filled from the file.
_L, _A, _R, _T = gguf.Keys.LLM, gguf.Keys.Attention, gguf.Keys.Rope, gguf.Keys.Tokenizer
KEY_TYPES: dict[str, tuple[int, ...]] = {
    gguf.Keys.General.ARCHITECTURE: (VT.STRING,),
    gguf.Keys.General.FILE_TYPE: (VT.UINT32,),
    gguf.Keys.General.QUANTIZATION_VERSION: (VT.UINT32,),
    _L.VOCAB_SIZE: (VT.UINT32,), _L.CONTEXT_LENGTH: (VT.UINT32,), _L.EMBEDDING_LENGTH: (VT.UINT32,),
    _L.BLOCK_COUNT: (VT.UINT32,), _L.FEED_FORWARD_LENGTH: (VT.UINT32, VT.ARRAY),
    _A.HEAD_COUNT: (VT.UINT32, VT.ARRAY), _A.HEAD_COUNT_KV: (VT.UINT32, VT.ARRAY),
    _A.KEY_LENGTH: (VT.UINT32,), _A.VALUE_LENGTH: (VT.UINT32,), _A.SLIDING_WINDOW: (VT.UINT32,),
    _A.LAYERNORM_EPS: (VT.FLOAT32,), _A.LAYERNORM_RMS_EPS: (VT.FLOAT32,),
    _R.DIMENSION_COUNT: (VT.UINT32,), _R.FREQ_BASE: (VT.FLOAT32,),
    _T.MODEL: (VT.STRING,), _T.PRE: (VT.STRING,), _T.CHAT_TEMPLATE: (VT.STRING,),
    _T.ADD_BOS: (VT.BOOL,), _T.ADD_EOS: (VT.BOOL,), _T.ADD_SEP: (VT.BOOL,), _T.ADD_PREFIX: (VT.BOOL,),
    _T.REMOVE_EXTRA_WS: (VT.BOOL,),
}  # fmt: skip


def check_key_types(meta: GGUFMeta) -> None:
    arch = meta.kv.get(gguf.Keys.General.ARCHITECTURE)
    for template, allowed in KEY_TYPES.items():
        key = template.format(arch=arch) if "{arch}" in template else template
        if key in meta.types and meta.types[key] not in allowed:
            want = " or ".join(VT(t).name.lower() for t in allowed)
            raise ModelFormatError(
                f"GGUF {key} must be a {want}, found {VT(meta.types[key]).name.lower()}; llama.cpp refuses it"
            )
