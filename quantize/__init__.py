"""edge-quantize: convert Hugging Face checkpoints to GGUF (and ONNX) at selectable bit widths.

The GGUF path needs only numpy, gguf and llama-cpp-python; torch/transformers/optimum are only
imported by the ONNX export (the `onnx` extra).
"""

__version__ = "0.1.0"
