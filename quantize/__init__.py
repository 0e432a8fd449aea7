"""edge-quantize: convert Hugging Face checkpoints to GGUF (and ONNX) at selectable bit widths.

The GGUF path needs only numpy, gguf and llama-cpp-python; the ONNX export adds onnx, onnxruntime
and tokenizers (the `onnx` extra). No module imports torch, transformers or optimum.
"""

__version__ = "0.1.0"
