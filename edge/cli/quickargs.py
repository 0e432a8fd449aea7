"""The keyword arguments of a typer command read straight from a plain command line, or None.

`edge serve` is the command a device runs at every boot, and typer builds a pydantic validator for each
of its ~25 options before it calls the command (about as long as importing FastAPI). `quick_kwargs`
reads the same options from the command's own signature (its `typer.Option`/`typer.Argument`
defaults: names, flags, types) and parses a command line made only of what it can read exactly as typer
would: known options, each given once, with plain values (`--port 8080`, `--ctx=2048`, `--no-spec`)
and at most the positional arguments the command declares. Anything else (`--help`, an unknown or
repeated option, a missing value, `08` for a number, an empty value) returns None and typer parses
the line, so help and error messages are always typer's own.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from pathlib import Path
from types import NoneType, UnionType
from typing import Any

import typer.models

_INT = re.compile(r"-?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")
_CONVERT: dict[Any, Callable[[str], Any]] = {str: str, Path: Path}
# typer settings that change parsing or the value: a parameter with any of them set is not ours to read
_PLAIN = {
    "callback": None,
    "envvar": None,
    "parser": None,
    "default_factory": None,
    "min": None,
    "max": None,
    "exists": False,
    "resolve_path": False,
    "is_eager": False,
    "expose_value": True,
    "prompt": False,
    "count": False,
}


class _Param:
    def __init__(self, name: str, default: Any, kind: str, convert: Callable[[str], Any]):
        self.name, self.default, self.kind, self.convert = name, default, kind, convert


def _value_type(hint: Any) -> tuple[str, Any] | None:
    """("bool" | "one" | "many", element type) of an annotation we read, else None."""
    args = typing.get_args(hint)
    if (typing.get_origin(hint) in (typing.Union, UnionType)) and len(args) == 2 and NoneType in args:
        hint = next(a for a in args if a is not NoneType)  # `X | None`
    if hint is bool:
        return "bool", bool
    if typing.get_origin(hint) is list and typing.get_args(hint) in ((str,), (Path,)):
        return "many", typing.get_args(hint)[0]
    if hint in (str, Path, int, float):
        return "one", hint
    return None


def _converter(kind: Any) -> Callable[[str], Any]:
    if kind is int:
        return lambda text: int(text) if _INT.fullmatch(text) else _refuse()
    if kind is float:
        return lambda text: float(text) if _FLOAT.fullmatch(text) else _refuse()
    plain = _CONVERT[kind]
    return lambda text: plain(text) if text else _refuse()


class _NotPlain(Exception):
    pass


def _refuse() -> Any:
    raise _NotPlain


def _table(command: Callable) -> tuple[dict[str, tuple[_Param, Any]], list[_Param], list[_Param]] | None:
    """(flag -> (parameter, value for a bool flag, else None), positional parameters, all parameters)."""
    hints = typing.get_type_hints(command)
    flags: dict[str, tuple[_Param, Any]] = {}
    positional: list[_Param] = []
    params: list[_Param] = []
    for name, sig in inspect.signature(command).parameters.items():
        info = sig.default
        value_type = _value_type(hints.get(name))
        if not isinstance(info, typer.models.ParameterInfo) or value_type is None:
            return None
        if any(getattr(info, attr, plain) != plain for attr, plain in _PLAIN.items()):
            return None
        kind, element = value_type
        param = _Param(name, info.default, kind, bool if kind == "bool" else _converter(element))
        params.append(param)
        if isinstance(info, typer.models.ArgumentInfo):
            if kind != "one" or info.default is ...:
                return None  # a required or variadic argument: typer's business
            positional.append(param)
            continue
        decls = list(info.param_decls or ()) or ["--" + name.replace("_", "-")]
        for decl in decls:
            on, _, off = decl.partition("/")
            if kind != "bool" and off:
                return None
            if not on.startswith("--") or (off and not off.startswith("--")):
                return None  # short options and their clusters: typer's
            flags[on] = (param, True if kind == "bool" else None)
            if off:
                flags[off] = (param, False)
        if kind == "bool" and not any("/" in d for d in decls) and info.default is not False:
            return None  # a bool option whose switch we cannot see
    return flags, positional, params


def quick_kwargs(command: Callable, args: list[str]) -> dict[str, Any] | None:
    """`command`'s keyword arguments from `args` when typer would read them the same way, else None."""
    table = _table(command)
    if table is None:
        return None
    flags, positional, params = table
    given: dict[str, Any] = {}
    free: list[str] = []
    i = 0
    try:
        while i < len(args):
            token = args[i]
            i += 1
            if not token.startswith("-"):
                free.append(token)
                continue
            if token == "--" or not token.startswith("--"):
                return None  # the end of options, "-" and short options: typer's
            flag, eq, inline = token.partition("=")
            if flag not in flags:
                return None
            param, switch = flags[flag]
            if param.kind == "bool":
                if eq:
                    return None
                value: Any = switch
            else:
                if not eq:
                    if i >= len(args):
                        return None
                    inline = args[i]
                    i += 1
                value = param.convert(inline)
            if param.kind == "many":
                given.setdefault(param.name, []).append(value)
            elif param.name in given:
                return None
            else:
                given[param.name] = value
        if len(free) > len(positional):
            return None
        for param, text in zip(positional, free, strict=False):
            given[param.name] = param.convert(text)
    except _NotPlain:
        return None
    return {p.name: given.get(p.name, p.default) for p in params}
