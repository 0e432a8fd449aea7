"""Import llama-cpp-python's low-level modules without its package __init__.

`llama_cpp/__init__.py` imports the high-level `Llama` class and with it numpy, jinja2 and the chat
formats: ~0.7 s of a cold start whose whole budget is 0.6 s, for code the runtime never uses. We
register a stand-in `llama_cpp` package module whose __path__ is the real one, so that
`llama_cpp.llama_cpp` (ctypes bindings) and `llama_cpp.llama_grammar` (pure Python) import alone.
The stand-in runs the real __init__ the first time anyone asks it for an attribute (for example
`from llama_cpp import Llama` in a test), so other users of the package see no difference.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

from edge.errors import DependencyMissingError

_INSTALL_HINT = "llama-cpp-python is not installed: pip install 'llama-cpp-python==0.3.36'"


def _install_stub() -> None:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise DependencyMissingError(_INSTALL_HINT)
    pkg = types.ModuleType("llama_cpp")
    pkg.__path__ = list(spec.submodule_search_locations or [])
    pkg.__spec__, pkg.__file__, pkg.__package__ = spec, spec.origin, "llama_cpp"
    state = {"loaded": False}

    def __getattr__(name: str):
        if not state["loaded"]:
            state["loaded"] = True
            with open(spec.origin, encoding="utf-8") as f:
                exec(compile(f.read(), spec.origin, "exec"), pkg.__dict__)  # the real __init__, once
        try:
            return pkg.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 'llama_cpp' has no attribute {name!r}") from None

    pkg.__getattr__ = __getattr__
    sys.modules["llama_cpp"] = pkg


def llama_module(name: str) -> types.ModuleType:
    """`llama_cpp.<name>`, e.g. "llama_cpp" (the ctypes API) or "llama_grammar"."""
    if "llama_cpp" not in sys.modules:
        _install_stub()
    try:
        return importlib.import_module(f"llama_cpp.{name}")
    except ImportError as exc:
        raise DependencyMissingError(f"{_INSTALL_HINT} ({exc})") from exc
