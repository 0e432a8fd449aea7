"""Import the parts of llama-cpp-python and gguf the runtime needs without their package __init__.

`llama_cpp/__init__.py` imports the high-level `Llama` class and with it numpy, jinja2 and the chat
formats (~0.7 s); `gguf/__init__.py` imports its reader, writer, lazy tensors and numpy (~0.15 s),
while the runtime needs only `gguf.constants` (enums and tables, 15 ms). Both costs fell on every
`edge serve` cold start, whose budget is 0.6 s. We register a stand-in package module whose
__path__ is the real one, so that `llama_cpp.llama_cpp` (ctypes bindings), `llama_cpp.llama_grammar`,
`gguf.constants` and `prometheus_client.core` (without its HTTP exposition) import alone. The stand-in runs the real __init__ the first time anyone asks it
for an attribute (`from llama_cpp import Llama` in a test, `gguf.GGUFWriter` in the converter), so
other users of the packages see no difference.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

from edge.errors import DependencyMissingError

_HINTS = {
    "llama_cpp": "llama-cpp-python is not installed: pip install 'llama-cpp-python==0.3.36'",
    "gguf": "gguf is not installed: pip install gguf",
    "prometheus_client": "prometheus-client is not installed: pip install 'prometheus-client>=0.19'",
    "uvicorn": "uvicorn is not installed: pip install uvicorn",
}


# names a package's __init__ re-exports from one of its submodules, served from that submodule while the
# __init__ has not run: uvicorn's lifespan does `from uvicorn import Config`, and uvicorn/__init__.py
# imports its command line with it (click, multiprocessing, the reload supervisors)
_REEXPORTS = {"uvicorn": {"Config": "config", "Server": "server"}}


def _install_stub(package: str) -> None:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DependencyMissingError(_HINTS[package])
    origin = spec.origin
    pkg = types.ModuleType(package)
    pkg.__path__ = list(spec.submodule_search_locations or [])
    pkg.__spec__, pkg.__file__, pkg.__package__ = spec, origin, package
    state = {"loaded": False}

    def __getattr__(name: str):
        source = _REEXPORTS.get(package, {}).get(name)
        if not state["loaded"] and source is not None:
            return getattr(importlib.import_module(f"{package}.{source}"), name)
        if not state["loaded"] and importlib.util.find_spec(f"{package}.{name}") is not None:
            # a submodule (`from . import values` inside the package): imported alone as well
            return importlib.import_module(f"{package}.{name}")
        if not state["loaded"]:
            state["loaded"] = True
            with open(origin, encoding="utf-8") as f:
                exec(compile(f.read(), origin, "exec"), pkg.__dict__)  # the real __init__, once
        try:
            return pkg.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    vars(pkg)["__getattr__"] = __getattr__  # a module's __getattr__ (PEP 562) lives in its namespace
    sys.modules[package] = pkg


def submodule(package: str, name: str) -> types.ModuleType:
    """`package.name` imported without running `package/__init__.py` (unless it already ran)."""
    if package not in sys.modules:
        _install_stub(package)
    try:
        return importlib.import_module(f"{package}.{name}")
    except ImportError as exc:
        raise DependencyMissingError(f"{_HINTS[package]} ({exc})") from exc


def llama_module(name: str) -> types.ModuleType:
    """`llama_cpp.<name>`, e.g. "llama_cpp" (the ctypes API) or "llama_grammar"."""
    return submodule("llama_cpp", name)


def gguf_constants() -> types.ModuleType:
    """`gguf.constants`: Keys, MODEL_TENSOR, TENSOR_NAMES, GGML_QUANT_SIZES, GGMLQuantizationType..."""
    return submodule("gguf", "constants")
