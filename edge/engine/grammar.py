"""GBNF grammars for structured output (OpenAI `response_format`).

`JSON_OBJECT_GBNF` forces any JSON object (`{"type": "json_object"}`); `json_schema_to_gbnf` turns a
JSON schema (`{"type": "json_schema", ...}`) into a grammar with the pure-Python converter that
llama-cpp-python ships (`llama_cpp.llama_grammar`, no native code involved). The grammar goes into
`SamplingParams.grammar`; the llama.cpp backend compiles it with `llama_sampler_init_grammar`.
"""

from __future__ import annotations

import json

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


def json_schema_to_gbnf(schema: dict | str) -> str:
    """GBNF accepting exactly the JSON documents valid under `schema` (the supported subset).

    Raises BadRequestError when the schema is not JSON or uses something the converter cannot express.
    """
    from edge.lightimport import llama_module

    convert = llama_module("llama_grammar").json_schema_to_gbnf

    if isinstance(schema, dict):
        text = json.dumps(schema)
    else:
        text = schema
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadRequestError(
                f"response_format json_schema is not valid JSON: {exc}", param="response_format"
            ) from exc
    try:
        return convert(text)
    except Exception as exc:  # the converter raises bare Exceptions/KeyErrors on unsupported schemas
        raise BadRequestError(
            f"cannot turn this JSON schema into a grammar ({type(exc).__name__}: {exc}); "
            "simplify the schema or use response_format json_object",
            param="response_format",
        ) from exc


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
