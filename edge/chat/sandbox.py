"""The bounded Jinja2 sandbox that chat templates from model files run in (used by edge.chat.templates).

It is Hugging Face's chat-template environment (`ImmutableSandboxedEnvironment`, trim_blocks,
lstrip_blocks, loopcontrols, `{% generation %}`, `raise_exception`, `strftime_now`, HF's `tojson`)
with three bounds on top of the sandbox's attribute rules:

- size: every value a template builds goes through a check *before* it is built where the size
  is predictable (`*`, `+`, `~`, `**`, `%`, `replace`, `join`, numeric widths and counts passed to
  calls and filters) and after it is built otherwise; no single value may exceed `max_chars`;
- memory: each render has an allocation budget (a thread-local counter charged with the size of
  every value built), so thousands of `{% set %}` of large values cannot add up;
- time: `run_bounded()` renders in a worker thread and interrupts it (an asynchronous exception,
  delivered between bytecodes of the compiled template) past the deadline.

Every violation raises `BadRequestError` with a message meant for whoever supplied the model.
"""

from __future__ import annotations

import ctypes
import functools
import json
import re
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edge.errors import BadRequestError

MAX_INT_ARG = 1_000_000  # widths, counts, indents passed to calls and filters
MAX_INT_BITS = 4096  # integer arithmetic
MAX_POWER = 64  # exponent of `**` (beyond |base| <= 1)
# A %-style or {}-style format spec with a width or precision of 7+ digits (>= 1e6 characters).
_HUGE_PERCENT = re.compile(r"%(\([^)]*\))?[-+ #0]*(\d{7,}|\d*\.\d{7,})")
_HUGE_BRACE = re.compile(r"\{[^{}]*:[^{}]*\d{7,}[^{}]*\}")

_local = threading.local()  # .budget: characters this render may still build


class RenderTimeout(BaseException):
    """Injected into a render thread past its deadline (a BaseException: templates cannot catch it)."""


def _fail(what: str) -> BadRequestError:
    return BadRequestError(f"the chat template {what}; the template is unusable: fix it or replace it")


def _size(value: Any) -> int:
    if isinstance(value, (str, bytes, list, tuple, dict)):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > MAX_INT_BITS:
            raise _fail("builds an integer too large")
        return value.bit_length() // 8
    return 0


def charge(value: Any, limit: int) -> Any:
    """Check a built value against the single-value limit and the render's budget."""
    n = _size(value)
    if n > limit:
        raise _fail(f"builds a value of {n} characters (limit {limit})")
    budget = getattr(_local, "budget", None)
    if budget is not None:
        _local.budget = budget - n
        if _local.budget < 0:
            raise _fail("builds more data than its memory budget allows")
    return value


def _precheck(n: int, limit: int, what: str) -> None:
    if n > limit:
        raise _fail(f"would build {what} of {n} characters (limit {limit})")


def _seq_len(x: Any) -> int | None:
    return len(x) if isinstance(x, (str, bytes, list, tuple)) else None


def _check_args(args: tuple, kwargs: dict, limit: int) -> None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_INT_ARG:
            raise _fail(f"passes the number {a} to a function (limit {MAX_INT_ARG})")
        n = _seq_len(a)
        if n is not None and n > limit:
            raise _fail(f"passes a value of {n} characters to a function")


def _check_format_string(fmt: Any) -> None:
    if isinstance(fmt, str) and (_HUGE_PERCENT.search(fmt) or _HUGE_BRACE.search(fmt)):
        raise _fail("uses a format string with a huge width or precision")


def _precheck_join(items: Any, sep: Any, limit: int) -> None:
    if isinstance(items, (list, tuple)):
        n = sum(_seq_len(x) or 0 for x in items) + len(str(sep)) * len(items)
        _precheck(n, limit, "a joined string")


def _precheck_replace(s: Any, old: Any, new: Any, limit: int) -> None:
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
        hits = len(s) + 1 if old == "" else s.count(old)
        _precheck(len(s) + hits * (len(new) - len(old)), limit, "a replaced string")


def _precheck_method(obj: Any, args: tuple, limit: int) -> None:
    owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
    if isinstance(owner, str) and name in ("format", "format_map"):
        _check_format_string(owner)
    elif isinstance(owner, str) and name == "replace" and len(args) >= 2:
        _precheck_replace(owner, args[0], args[1], limit)
    elif isinstance(owner, str) and name == "join" and args:
        _precheck_join(args[0], owner, limit)


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles `a ~ b` to a size-checked join (chat templates never autoescape)."""

    def visit_Concat(self, node: jinja2.nodes.Concat, frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (HF's assistant-mask marker): renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """HF's chat-template environment, with the size and memory bounds described above."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, max_chars: int):
        super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _GenerationTag])
        self.max_chars = max_chars
        self.filters["tojson"] = hf_tojson
        self.filters = {name: _bounded_filter(f, name, max_chars) for name, f in self.filters.items()}
        self.globals["raise_exception"] = raise_exception
        self.globals["strftime_now"] = strftime_now

    def bounded_concat(self, parts: tuple) -> str:
        texts = [str(p) for p in parts]
        _precheck(sum(map(len, texts)), self.max_chars, "a concatenated string")
        return charge("".join(texts), self.max_chars)

    def call_binop(self, context, op: str, left: Any, right: Any) -> Any:
        limit = self.max_chars
        if op == "**" and isinstance(right, (int, float)) and abs(right) > MAX_POWER:
            if not (isinstance(left, (int, float)) and abs(left) <= 1):
                raise _fail("raises a number to a huge power")
        elif op == "*":
            n, seq = (right, left) if isinstance(right, int) else (left, right)
            seq_len = _seq_len(seq)
            if isinstance(n, int) and seq_len is not None:
                _precheck(seq_len * max(n, 0), limit, "a repeated value")
        elif op == "+":
            left_len, right_len = _seq_len(left), _seq_len(right)
            if left_len is not None and right_len is not None:
                _precheck(left_len + right_len, limit, "a concatenated value")
        elif op == "%":
            _check_format_string(left)
        return charge(super().call_binop(context, op, left, right), limit)

    def wrap_str_format(self, value: Any):  # jinja2 >= 3.1.5 wraps str.format at attribute access
        if getattr(value, "__name__", "") in ("format", "format_map"):
            _check_format_string(getattr(value, "__self__", None))
        return super().wrap_str_format(value)

    def call(__self, __context, __obj, *args, **kwargs):
        _check_args(args, kwargs, __self.max_chars)
        _precheck_method(__obj, args, __self.max_chars)
        return charge(super().call(__context, __obj, *args, **kwargs), __self.max_chars)


def _bounded_filter(f: Callable, name: str, limit: int) -> Callable:
    @functools.wraps(f)  # keeps jinja_pass_arg (pass_eval_context, pass_context, ...)
    def wrapper(*args, **kwargs):
        _check_args(args, kwargs, limit)
        values = [a for a in args if not isinstance(a, (jinja2.nodes.EvalContext, jinja2.runtime.Context))]
        if name == "format" and values:
            _check_format_string(values[0])
        elif name == "replace" and len(values) >= 3:
            _precheck_replace(values[0], values[1], values[2], limit)
        elif name == "join" and values:
            _precheck_join(values[0], values[1] if len(values) > 1 else kwargs.get("d", ""), limit)
        return charge(f(*args, **kwargs), limit)

    return wrapper


# --- the helpers HF's apply_chat_template exposes (transformers.utils.chat_template_utils) ---


def raise_exception(message: Any) -> None:
    raise jinja2.exceptions.TemplateError(str(message))


def hf_tojson(
    x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
) -> str:
    """HF's tojson: plain json.dumps (no HTML escaping, unlike Jinja's built-in), unicode kept."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=8)
def environment(max_chars: int) -> BoundedEnvironment:
    return BoundedEnvironment(max_chars)


@functools.lru_cache(maxsize=32)
def compile_template(source: str, max_chars: int) -> jinja2.Template:
    try:
        return environment(max_chars).from_string(source)
    except jinja2.TemplateError as e:
        raise BadRequestError(f"the model's chat template does not compile: {e}") from None


# --- bounded execution ---


def render_chunks(template: jinja2.Template, variables: dict, max_chars: int, budget: int) -> str:
    """Render, charging the budget and stopping as soon as the output passes max_chars."""
    _local.budget = budget
    try:
        out, size = [], 0
        for chunk in template.generate(**variables):
            size += len(chunk)
            if size > max_chars:
                raise _fail(f"renders more than {max_chars} characters")
            out.append(chunk)
        return "".join(out)
    finally:
        _local.budget = None


def run_bounded(fn: Callable[[], str], timeout: float) -> str:
    """Run fn in a worker thread; past `timeout` seconds interrupt it and raise BadRequestError."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    worker = threading.Thread(target=target, name="edge-chat-template", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        assert worker.ident is not None  # set once the thread started
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident), ctypes.py_object(RenderTimeout))
        worker.join(1.0)
        raise _fail(f"did not finish within {timeout:g} s")
    if "error" in box:
        raise as_bad_request(box["error"]) from None
    return box["value"]


def as_bad_request(e: BaseException) -> BaseException:
    """Map whatever a template raised to the BadRequestError a client sees."""
    if isinstance(e, BadRequestError):
        return e
    if isinstance(e, RenderTimeout):
        return _fail("was interrupted at its time limit")
    if isinstance(e, jinja2.exceptions.SecurityError):
        return BadRequestError(f"the chat template tried an unsafe operation and was stopped: {e}")
    if isinstance(e, (RecursionError, MemoryError)):
        return _fail(f"exhausted a resource ({type(e).__name__})")
    if isinstance(e, Exception):
        return BadRequestError(f"chat template error: {e}" if str(e) else f"chat template error: {type(e).__name__}")
    return e  # KeyboardInterrupt, SystemExit: not ours to swallow
