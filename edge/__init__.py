"""edge: a small offline runtime and HTTP server for GGUF (and ONNX) language models.

Nothing in this package imports torch, transformers or optimum.
"""

__version__ = "0.1.0"
