"""Choose the backend by the model file, behind one `Engine` interface.

A file starting with the GGUF magic (or named *.gguf) -> llama.cpp (`edge.engine.llamacpp`);
a folder with an ONNX model (edge-quantize's export) -> onnxruntime (`edge.engine.onnx.backend`).
Backends are imported lazily so that importing the server never loads a native library it does
not need.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edge.engine.base import Delta, Engine, Event, Finish, ModelInfo, SamplingParams
from edge.engine.speculative import SpecConfig
from edge.errors import ModelFormatError, NotFoundError

__all__ = ["open_engine", "detect_format", "Engine", "SamplingParams", "ModelInfo", "Delta", "Finish", "Event"]

GGUF_MAGIC = b"GGUF"


def detect_format(path: Path) -> str:
    """ "gguf" or "onnx", from the file's content (not only its name)."""
    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"model path {path} does not exist; `edge models` lists the installed models")
    if path.is_dir():
        if any(path.glob("*.onnx")):
            return "onnx"
        ggufs = sorted(path.glob("*.gguf"))
        hint = f" (it holds {ggufs[0].name}: pass that file)" if ggufs else ""
        raise ModelFormatError(f"{path} is a folder without an ONNX model{hint}")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic == GGUF_MAGIC:
        return "gguf"
    if path.suffix == ".onnx":
        return "onnx"
    raise ModelFormatError(
        f"{path} is neither a GGUF file (no GGUF magic, starts with {magic!r}) nor an ONNX model folder; "
        "convert it with `edge-quantize convert`"
    )


def open_engine(
    path: Path,
    *,
    name: str,
    n_ctx: int | None = None,
    n_parallel: int = 1,
    n_threads: int | None = None,
    queue_size: int = 16,
    cache_ram_bytes: int = 0,
    cache_dir: Path | None = None,
    speculative: bool | SpecConfig = False,
    embed_exact: bool = False,
    **backend_opts,
) -> Engine:
    """Load the model at `path` and start its scheduler. `engine.load_ns` tells how long it took.

    `cache_ram_bytes`/`cache_dir`: the prompt cache beyond the slots (GGUF models; ONNX has none).
    `speculative`: prompt-lookup drafts (edge.engine.speculative; GGUF models): True for the default
    SpecConfig, or one of its own."""
    fmt = detect_format(Path(path))
    if fmt == "gguf":
        from edge.engine.llamacpp import LlamaCppEngine
        from edge.formats.filecache import remember

        # bounded checks before llama.cpp parses the file: a crafted header is a ModelFormatError, not a crash
        # (remembered per unchanged file: a refusal raises and is never cached)
        for warning in remember(Path(path), "validated", lambda: _validation_warnings(Path(path))):
            logging.getLogger("edge.engine").warning("%s: %s", Path(path).name, warning)

        return LlamaCppEngine(
            Path(path),
            name=name,
            n_ctx=n_ctx,
            n_parallel=n_parallel,
            n_threads=n_threads,
            queue_size=queue_size,
            cache_ram_bytes=cache_ram_bytes,
            cache_dir=cache_dir,
            spec=speculative if isinstance(speculative, SpecConfig) else SpecConfig() if speculative else None,
            embed_exact=embed_exact,
            **backend_opts,
        )
    from edge.engine.onnx.backend import OnnxEngine  # validates the folder (external data, manifest) first

    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    return OnnxEngine(
        folder,
        name=name,
        n_ctx=n_ctx,
        n_parallel=n_parallel,
        n_threads=n_threads,
        queue_size=queue_size,
        **backend_opts,
    )


def _validation_warnings(path: Path) -> list[str]:
    from edge.formats.validate import validate_gguf  # imported only when the file is not remembered as valid

    return list(validate_gguf(path).warnings)
