"""GBNF grammars for structured output (OpenAI `response_format`, Ollama `format`, tool calls).

`JSON_OBJECT_GBNF` forces any JSON object (`{"type": "json_object"}`); `json_schema_to_gbnf` turns a
JSON schema into a grammar with llama.cpp's converter (the pure-Python `llama_cpp.llama_grammar`,
no native code involved), extended here with integer ranges and JSON-strict strings. The grammar
goes into `SamplingParams.grammar`; the llama.cpp backend compiles it with `llama_sampler_init_grammar`.

A schema is checked first (`check_schema`), bounded in depth, size and enum length, and every
keyword must be one the grammar enforces: anything else is a `BadRequestError` naming the keyword
and where it is, never a silently unconstrained value. `oneOf` is enforced as `anyOf` (a value may
match several branches).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from edge.errors import BadRequestError

# Whitespace is bounded so that a small model cannot loop on blanks inside the object forever.
JSON_OBJECT_GBNF = r"""
root    ::= object
value   ::= object | array | string | number | ("true" | "false" | "null") ws
object  ::= "{" ws ( member ( "," ws member )* )? "}" ws
member  ::= string ":" ws value
array   ::= "[" ws ( value ( "," ws value )* )? "]" ws
string  ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} ) )* "\"" ws
number  ::= "-"? ( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,4} )? ws
ws      ::= [ \t\n]{0,4}
""".strip()

MAX_DEPTH = 24  # nesting of schemas inside schemas
MAX_NODES = 4_000  # subschemas plus enum values, over the whole schema
MAX_ENUM = 512  # values in one enum
MAX_ITEMS = 64  # minItems/maxItems: repetitions are spelled out in the grammar
MAX_LENGTH = 1_024  # minLength/maxLength, likewise
MAX_PATTERN = 512  # characters of one `pattern`
MAX_GRAMMAR_CHARS = 512 * 1024
INT_LIMIT = 10**16 - 1  # the converter's integers have at most 16 digits

TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}
FORMATS = {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "nullable"}
ANNOTATIONS |= {"readOnly", "writeOnly", "strict"}
KEYWORDS = {"type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems"}
KEYWORDS |= {"enum", "const", "anyOf", "oneOf", "$ref", "$defs", "definitions", "pattern", "format"}
KEYWORDS |= {"minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
INT_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
# What a `pattern` may use: literals, [classes], groups, | and quantifiers. Escapes, `.`, negated classes,
# quotes and lookarounds are refused: the converter would let them produce invalid JSON or mistranslate them.
PATTERN_REFUSED = re.compile(r'[\\."^$]|\[\^|\(\?')
PATTERN_HELP = "use literals, [a-z] classes, groups, | and quantifiers; no escapes, '.', [^...] or lookarounds"
STRICT_CHAR = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'


# -- checking -------------------------------------------------------------------------------------
class _Checker:
    """Walks a schema once, bounded; raises BadRequestError naming the first problem and its path."""

    def __init__(self, root: dict, param: str, what: str):
        self.root, self.param, self.what = root, param, what
        self.nodes = 0

    def fail(self, path: str, why: str) -> None:
        where = path if len(path) < 120 else "..." + path[-100:]
        raise BadRequestError(f"{self.what} at {where or '(root)'}: {why}", param=self.param)

    def check(self, s, path: str, depth: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            self.fail(path, f"the schema has more than {MAX_NODES} parts; simplify it")
        if depth > MAX_DEPTH:
            self.fail(path, f"nesting deeper than {MAX_DEPTH} levels is refused")
        if s is True or s == {}:
            return
        if not isinstance(s, dict):
            self.fail(path, f"a schema must be an object, got {type(s).__name__}")
        for key in s:
            if key not in KEYWORDS and key not in ANNOTATIONS:
                self.fail(path, f"keyword {key!r} cannot be enforced by the grammar; remove it")
        self._types(s, path)
        self._children(s, path, depth)
        self._values(s, path)

    def _types(self, s: dict, path: str) -> None:
        t = s.get("type")
        types = t if isinstance(t, list) else [t] if t is not None else []
        if not all(isinstance(x, str) and x in TYPES for x in types) or (isinstance(t, list) and not t):
            self.fail(path, f"type must be one of {sorted(TYPES)} or a list of them, got {t!r}")
        bounded = [k for k in INT_BOUNDS if k in s]
        if bounded and t != "integer" and "enum" not in s and "const" not in s:
            self.fail(path, f"{bounded[0]} is enforced only for type integer; drop it or use an enum")
        for k in bounded:
            v = s[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or abs(v) > INT_LIMIT:
                self.fail(path, f"{k} must be an integer within ±{INT_LIMIT}, got {v!r}")
        if "format" in s and s["format"] not in FORMATS:
            self.fail(path, f"format {s['format']!r} cannot be enforced; supported: {sorted(FORMATS)}")
        if "pattern" in s:
            p = s["pattern"]
            if not isinstance(p, str) or len(p) > MAX_PATTERN:
                self.fail(path, f"pattern must be a string of at most {MAX_PATTERN} characters")
            if not (p.startswith("^") and p.endswith("$")):
                self.fail(path, f"pattern {p!r} must be anchored with ^ and $ to be enforced")
            bad = PATTERN_REFUSED.search(p[1:-1])
            if bad:
                self.fail(path, f"pattern {p!r}: {bad.group()!r} cannot be enforced by the grammar ({PATTERN_HELP})")

    def _children(self, s: dict, path: str, depth: int) -> None:
        props = s.get("properties", {})
        if not isinstance(props, dict):
            self.fail(path, "properties must be an object")
        for name, sub in props.items():
            self.check(sub, f"{path}.properties.{name}", depth + 1)
        req = s.get("required", [])
        if not isinstance(req, list) or not all(isinstance(r, str) for r in req):
            self.fail(path, "required must be a list of property names")
        extra = s.get("additionalProperties")
        if extra is not None and extra is not False:
            self.check(extra, f"{path}.additionalProperties", depth + 1)
        for key in ("$defs", "definitions"):
            defs = s.get(key, {})
            if not isinstance(defs, dict):
                self.fail(path, f"{key} must be an object")
            for name, sub in defs.items():
                self.check(sub, f"{path}.{key}.{name}", depth + 1)
        items = s.get("items")
        for i, sub in enumerate(items if isinstance(items, list) else [items] if items is not None else []):
            self.check(sub, f"{path}.items[{i}]", depth + 1)
        for key in ("prefixItems", "anyOf", "oneOf"):
            subs = s.get(key)
            if subs is None:
                continue
            if not isinstance(subs, list) or not subs:
                self.fail(path, f"{key} must be a non-empty list of schemas")
            for i, sub in enumerate(subs):
                self.check(sub, f"{path}.{key}[{i}]", depth + 1)

    def _values(self, s: dict, path: str) -> None:
        if "enum" in s:
            enum = s["enum"]
            if not isinstance(enum, list) or not enum or len(enum) > MAX_ENUM:
                self.fail(path, f"enum must be a list of 1 to {MAX_ENUM} values")
            self.nodes += len(enum)
        for key, top in (("minItems", MAX_ITEMS), ("maxItems", MAX_ITEMS), ("minLength", MAX_LENGTH)):
            self._count(s, key, top, path)
        self._count(s, "maxLength", MAX_LENGTH, path)
        if "$ref" in s:
            self._ref(s["$ref"], path)

    def _count(self, s: dict, key: str, top: int, path: str) -> None:
        v = s.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= top):
            self.fail(path, f"{key} must be an integer from 0 to {top}, got {v!r}")

    def _ref(self, ref, path: str) -> None:
        if not isinstance(ref, str) or not ref.startswith("#/"):
            self.fail(path, f"$ref {ref!r}: only local references (#/$defs/...) are supported")
        self.target(ref, path)

    def target(self, ref: str, path: str):
        node = self.root
        for part in ref[2:].split("/"):
            if not isinstance(node, dict) or part not in node:
                self.fail(path, f"$ref {ref!r} points to nothing")
            node = node[part]
        return node

    def no_cycles(self) -> None:
        """A $ref that reaches itself again would make an unbounded (recursive) grammar: refused."""
        done: set[str] = set()

        def refs_in(node, path: str) -> list[str]:
            out, stack = [], [node]
            while stack:
                n = stack.pop()
                if isinstance(n, dict):
                    if isinstance(n.get("$ref"), str):
                        out.append(n["$ref"])
                    stack.extend(v for k, v in n.items() if k not in ("$defs", "definitions"))
                elif isinstance(n, list):
                    stack.extend(n)
            return out

        def walk(ref: str, active: tuple[str, ...]) -> None:
            if ref in active:
                self.fail(ref, "recursive $ref cannot be turned into a bounded grammar; unroll it")
            if ref in done:
                return
            for sub in refs_in(self.target(ref, ref), ref):
                walk(sub, (*active, ref))
            done.add(ref)

        for ref in refs_in(self.root, ""):
            walk(ref, ())


def check_schema(schema, *, param: str = "response_format", what: str = "JSON schema") -> dict:
    """`schema` if the grammar can enforce all of it, else BadRequestError naming what and where."""
    if not isinstance(schema, dict):
        raise BadRequestError(f"{what} must be a JSON object", param=param)
    checker = _Checker(schema, param, what)
    checker.check(schema, "", 0)
    checker.no_cycles()
    return schema


# -- converting -----------------------------------------------------------------------------------
def _int_range(lo: int, hi: int) -> str:
    """GBNF for the decimal integers in [lo, hi] (JSON spelling: no leading zeros, no "-0")."""
    alts = []
    if lo < 0:
        alts.append('"-" (' + _nonneg_range(max(1, -hi), -lo) + ")")
    if hi >= 0:
        alts.append(_nonneg_range(max(0, lo), hi))
    return " | ".join(f"({a})" for a in alts)


def _nonneg_range(lo: int, hi: int) -> str:
    alts = []
    for digits in range(len(str(lo)), len(str(hi)) + 1):
        a = max(lo, 10 ** (digits - 1) if digits > 1 else 0)
        b = min(hi, 10**digits - 1)
        if a <= b:
            alts.append(_same_length(str(a), str(b)))
    return " | ".join(alts)


def _same_length(a: str, b: str) -> str:
    """Digit strings of len(a) == len(b) from a to b: a GBNF sequence or alternation."""
    if len(a) == 1:
        return f"[{a}-{b}]"
    rest = len(a) - 1
    if a[0] == b[0]:
        return f'"{a[0]}" ({_same_length(a[1:], b[1:])})'
    if a[1:] == "0" * rest and b[1:] == "9" * rest:
        return f"[{a[0]}-{b[0]}] [0-9]{{{rest}}}"
    alts = [f'"{a[0]}" ({_same_length(a[1:], "9" * rest)})']
    if int(b[0]) - int(a[0]) > 1:
        alts.append(f"[{int(a[0]) + 1}-{int(b[0]) - 1}] [0-9]{{{rest}}}")
    alts.append(f'"{b[0]}" ({_same_length("0" * rest, b[1:])})')
    return " | ".join(f"({x})" for x in alts)


def _converter():
    from edge.lightimport import llama_module

    base: Any = llama_module("llama_grammar")  # loaded at run time: its classes are not known statically

    class Converter(base.SchemaConverter):
        """llama.cpp's converter with integer ranges and JSON-strict strings (no raw control characters)."""

        def visit(self, schema, name):
            if schema.get("type") == "integer" and "enum" not in schema and "const" not in schema:
                lo, hi = -INT_LIMIT, INT_LIMIT
                if "minimum" in schema or "exclusiveMinimum" in schema:
                    lo = max(
                        int(schema.get("minimum", -INT_LIMIT)), int(schema.get("exclusiveMinimum", -INT_LIMIT - 1)) + 1
                    )
                if "maximum" in schema or "exclusiveMaximum" in schema:
                    hi = min(
                        int(schema.get("maximum", INT_LIMIT)), int(schema.get("exclusiveMaximum", INT_LIMIT + 1)) - 1
                    )
                if (lo, hi) != (-INT_LIMIT, INT_LIMIT):
                    if lo > hi:
                        raise ValueError(f"no integer lies between the bounds {lo} and {hi}")
                    rule_name = name + "-" if name in base.RESERVED_NAMES else name or "root"
                    return self._add_rule(rule_name, f"({_int_range(lo, hi)}) space")
            return super().visit(schema, name)

        def _add_primitive(self, name, rule):
            if name == "char":
                rule = base.BuiltinRule(STRICT_CHAR, [])
            return super()._add_primitive(name, rule)

    return Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)


def schema_grammar(
    schemas: Sequence[tuple[str, dict]],
    root: Callable[[list[str]], str] | None = None,
    *,
    param: str = "response_format",
    what: str = "JSON schema",
) -> str:
    """One grammar holding a rule per (name, schema); `root(rule_names)` spells the root rule
    (default: the single schema's value). Schemas are checked (`check_schema`) and never modified."""
    conv = _converter()
    names = []
    for name, schema in schemas:
        check_schema(schema, param=param, what=what)
        try:
            resolved = conv.resolve_refs(copy.deepcopy(schema), name or "root")
            names.append(conv.visit(resolved, name))
        except Exception as exc:  # the converter raises bare Exceptions/AssertionErrors on what it cannot express
            raise BadRequestError(
                f"{what} cannot be turned into a grammar ({type(exc).__name__}: {exc}); simplify it", param=param
            ) from exc
        # checked after each schema, so that many large ones are refused without building them all
        _bounded(sum(len(k) + len(v) + 5 for k, v in conv._rules.items()), what, param)
    if root is not None:
        conv._rules["root"] = root(names)
    text = conv.format_grammar()
    _bounded(len(text), what, param)
    return text


def _bounded(size: int, what: str, param: str) -> None:
    if size > MAX_GRAMMAR_CHARS:
        raise BadRequestError(
            f"{what} makes a grammar of over {MAX_GRAMMAR_CHARS} characters; "
            "simplify it (fewer enum values, shorter repetitions)",
            param=param,
        )


def json_schema_to_gbnf(schema: dict | str, *, param: str = "response_format") -> str:
    """GBNF accepting exactly the JSON documents valid under `schema` (the supported subset).

    Raises BadRequestError when the schema is not JSON or uses something the grammar cannot enforce.
    """
    if isinstance(schema, dict):
        return schema_grammar([("", schema)], param=param)
    try:
        parsed = json.loads(schema)
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"{param} json_schema is not valid JSON: {exc}", param=param) from exc
    return schema_grammar([("", parsed)], param=param)


def grammar_for_response_format(response_format: dict | None) -> str | None:
    """The grammar an OpenAI `response_format` asks for, or None for plain text."""
    if not response_format:
        return None
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT_GBNF
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is None:
            raise BadRequestError("response_format json_schema needs json_schema.schema", param="response_format")
        return json_schema_to_gbnf(schema)
    raise BadRequestError(
        f"unknown response_format type {kind!r}; use text, json_object or json_schema", param="response_format"
    )
