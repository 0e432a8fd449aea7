"""Bounded validation of model files before anything loads them.

`validate_gguf(path)` reads the header and tensor table of a GGUF file through edge.formats.gguf's
bounded reader, and refuses (ModelFormatError) anything llama.cpp would
refuse, crash or abort on, including vocabularies that kill its tokenizer on ordinary input.
`validate_gguf_adapter(path, base)` checks a LoRA adapter file, and that it fits its base model.
`validate_onnx_folder(dir)` refuses ONNX external-data locations that leave the model folder.
"""

from edge.formats.validate.gguf_adapter import AdapterSummary, validate_gguf_adapter
from edge.formats.validate.gguf_file import GGUFSummary, validate_gguf
from edge.formats.validate.onnx_folder import validate_onnx_folder

__all__ = ["AdapterSummary", "GGUFSummary", "validate_gguf", "validate_gguf_adapter", "validate_onnx_folder"]
