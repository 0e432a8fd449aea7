"""The one error hierarchy of edge and edge-quantize, and the one place it maps to HTTP and exit codes.

Library code raises these; `edge.server` turns them into OpenAI/Ollama error bodies with
`http_status`, and both CLIs turn them into a message on stderr and `exit_code`. Nothing else in
the code base decides a status code or an exit code.

Exit codes (documented in README.md):
    0 ok, 1 unexpected error, 2 bad input or usage, 3 not found, 4 bad model file,
    5 does not fit the device, 6 output exists (use --force), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

from typing import NoReturn


class EdgeError(Exception):
    """Base class. `message` should tell the user what to do next."""

    http_status = 500
    exit_code = 1
    openai_type = "server_error"

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param

    @property
    def code(self) -> str:
        """A stable snake_case identifier, e.g. ``model_not_found``."""
        name = type(self).__name__.removesuffix("Error")
        out = [name[0].lower()]
        for ch in name[1:]:
            out.append("_" + ch.lower() if ch.isupper() else ch)
        return "".join(out)

    def headers(self) -> dict[str, str]:
        return {}


class BadRequestError(EdgeError):
    """The request or the command line asks for something invalid."""

    http_status = 400
    exit_code = 2
    openai_type = "invalid_request_error"


class ContextOverflowError(BadRequestError):
    """The prompt (plus requested tokens) does not fit the context window."""


class UnknownTypeError(BadRequestError):
    """An unknown quantization type name."""


class AuthenticationError(EdgeError):
    http_status = 401
    exit_code = 2
    openai_type = "authentication_error"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class ForbiddenError(EdgeError):
    """E.g. a Host header not on the allow-list (DNS rebinding)."""

    http_status = 403
    exit_code = 2
    openai_type = "permission_error"


class NotFoundError(EdgeError):
    http_status = 404
    exit_code = 3
    openai_type = "not_found_error"


class ModelNotFoundError(NotFoundError):
    """A model name that the store does not know; the message lists what is available."""


class PayloadTooLargeError(BadRequestError):
    http_status = 413


class ModelFormatError(EdgeError):
    """A model file or checkpoint is malformed, truncated, inconsistent or unsafe."""

    http_status = 422
    exit_code = 4
    openai_type = "invalid_request_error"


class UnsupportedArchitectureError(ModelFormatError):
    """The checkpoint's model_type has no converter; the message names the supported ones."""


class DoesNotFitError(EdgeError):
    """The model does not fit the device's memory budget; the message names the numbers and a way out."""

    http_status = 507
    exit_code = 5
    openai_type = "server_error"


class OutputExistsError(EdgeError):
    http_status = 409
    exit_code = 6
    openai_type = "invalid_request_error"


class DependencyMissingError(EdgeError):
    """An optional dependency (an extra) is needed for this feature; the message says which."""

    exit_code = 1


class UnavailableError(EdgeError):
    """Temporarily unable to serve: retry later."""

    http_status = 503
    exit_code = 1
    openai_type = "server_error"

    def __init__(self, message: str, *, retry_after: int = 1, param: str | None = None):
        super().__init__(message, param=param)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class QueueFullError(UnavailableError):
    """Every slot is busy and the wait queue is full."""


class ModelLoadingError(UnavailableError):
    """The model is still loading."""


class RequestTimeoutError(EdgeError):
    http_status = 408
    exit_code = 1
    openai_type = "timeout_error"


def exit_code_for(exc: BaseException) -> int:
    """Exit code for any exception reaching a CLI's top level."""
    if isinstance(exc, EdgeError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 1


def http_status_for(exc: BaseException) -> int:
    return exc.http_status if isinstance(exc, EdgeError) else 500


def openai_error_body(exc: BaseException) -> dict:
    """`{"error": {...}}` as the OpenAI SDK parses it."""
    if isinstance(exc, EdgeError):
        return {"error": {"message": exc.message, "type": exc.openai_type, "param": exc.param, "code": exc.code}}
    return {"error": {"message": "internal error", "type": "server_error", "param": None, "code": "internal_error"}}


def ollama_error_body(exc: BaseException) -> dict:
    """`{"error": "..."}` as the ollama client parses it."""
    return {"error": exc.message if isinstance(exc, EdgeError) else "internal error"}


def report_and_exit(exc: BaseException, *, stream=None) -> NoReturn:
    """Print a one-line error for a CLI user and exit with the mapped code (never a traceback)."""
    import sys

    stream = stream or sys.stderr
    if isinstance(exc, KeyboardInterrupt):
        print("interrupted", file=stream)
    elif isinstance(exc, EdgeError):
        print(f"error: {exc.message}", file=stream)
    else:
        print(f"error: unexpected {type(exc).__name__}: {exc}", file=stream)
    raise SystemExit(exit_code_for(exc))
