"""Typed server settings: one table of (field, environment variable, default, help).

Precedence: command-line flag > environment variable > default. A bad environment value warns on
stderr and falls back to the default (a typo in a service file must not stop a kiosk from booting);
a bad flag is a `BadRequestError` (the person typing it is there to fix it).
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from edge.errors import BadRequestError

DEFAULT_HOST = "127.0.0.1"  # loopback only, as llama-server; expose on purpose with --host 0.0.0.0
DEFAULT_PORT = 11434  # Ollama's port: Ollama clients and `curl localhost:11434/api/generate` work unchanged
DEFAULT_KEEP_ALIVE = 300.0  # Ollama's 5 minutes


def edge_home(env: Mapping[str, str] | None = None) -> Path:
    """edge's folder (models/, aliases.toml, cache/, install slots): $EDGE_HOME, else ~/.edge."""
    home = (os.environ if env is None else env).get("EDGE_HOME")
    return Path(home).expanduser() if home else Path.home() / ".edge"


@dataclass(frozen=True)
class Setting:
    name: str
    env: str
    help: str


SETTINGS_HELP: tuple[Setting, ...] = (
    Setting("host", "EDGE_HOST", "address to bind (default 127.0.0.1: this machine only)"),
    Setting("port", "EDGE_PORT", "TCP port (default 11434, Ollama's)"),
    Setting("home", "EDGE_HOME", "edge's folder: models/, aliases.toml, cache/ (default ~/.edge)"),
    Setting("models_dir", "EDGE_MODELS", "folder holding the model files (default HOME/models)"),
    Setting(
        "api_key", "EDGE_API_KEY", "require this key (Authorization: Bearer or X-Api-Key) on every route but /health"
    ),
    Setting(
        "model",
        "EDGE_MODEL",
        "model to preload and keep loaded: a store name or a .gguf path (default: none; every model in the "
        "store is served, loaded by the first request that names it)",
    ),
    Setting("parallel", "EDGE_PARALLEL", "slots decoded together (default: from the hardware profile, else 1)"),
    Setting("ctx", "EDGE_CTX", "context length per slot (default: the model's, capped by the backend)"),
    Setting("queue_size", "EDGE_QUEUE", "requests that may wait for a slot before 503 (default 16)"),
    Setting("threads", "EDGE_THREADS", "CPU threads (default: physical cores)"),
    Setting("profile", "EDGE_PROFILE", "hardware profile name (default: detected)"),
    Setting("max_body_bytes", "EDGE_MAX_BODY", "largest accepted request body in bytes (default 4 MiB)"),
    Setting("api_key_file", "EDGE_API_KEY_FILE", "read the API key from this file (first line; keep it mode 600)"),
    Setting(
        "allowed_hosts",
        "EDGE_ALLOWED_HOSTS",
        "extra Host header names accepted (comma-separated; loopback names always are)",
    ),
    Setting(
        "cors_origins",
        "EDGE_CORS_ORIGINS",
        "browser origins allowed to call the API (comma-separated; '*' any; default none)",
    ),
    Setting(
        "cache_ram",
        "EDGE_CACHE_RAM",
        "MiB of earlier prompts' KV states each model keeps in memory, counted in its share of the "
        "memory budget (default 256; 0: off)",
    ),
    Setting("cache_dir", "EDGE_CACHE_DIR", "folder where cached prompt states persist (default HOME/cache/prompts)"),
    Setting(
        "spec",
        "EDGE_SPEC",
        "speculative decoding with drafts copied from the request's own prompt and output: on or off "
        "(default on; a request drafts only when its own acceptance and the measured cost of longer decodes say the draft pays)",
    ),
    Setting(
        "request_timeout",
        "EDGE_REQUEST_TIMEOUT",
        "seconds one request may take, queue and generation included (default 600; 0: none)",
    ),
    Setting(
        "read_timeout",
        "EDGE_READ_TIMEOUT",
        "seconds a client may take to send its request headers and body (default 30)",
    ),
    Setting(
        "keep_alive",
        "EDGE_KEEP_ALIVE",
        "how long an idle model stays loaded: a duration (5m, 1h30m) or seconds; 0 unloads after each "
        "request, negative keeps it forever (default 5m; a request's keep_alive wins)",
    ),
    Setting("pin", "EDGE_PIN", "models kept loaded for the server's life (comma-separated names)"),
    Setting(
        "memory_budget",
        "EDGE_MEMORY_BUDGET",
        "memory the loaded models may use, e.g. 2GiB or 1500MB (default: the hardware profile's budget)",
    ),
    Setting(
        "embed_exact",
        "EDGE_EMBED_EXACT",
        "on: an input embeds to the same vector, bit for bit, alone or in any batch (about half the "
        "throughput; default off: llama.cpp's own arithmetic, as llama-server)",
    ),
    Setting("embed_max_inputs", "EDGE_EMBED_MAX_INPUTS", "most inputs in one embeddings request (default 256)"),
    Setting(
        "embed_max_tokens",
        "EDGE_EMBED_MAX_TOKENS",
        "most tokens in one embeddings request, all inputs together (default 65536)",
    ),
)


DEFAULT_CACHE_RAM_MIB = 256  # a 700-token prompt of SmolLM2 takes 16 MiB, of an 8B model ~90 MiB


@dataclass(frozen=True)
class Settings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    home: Path | None = None
    models_dir: Path | None = None
    api_key: str | None = None
    model: str | None = None
    parallel: int | None = None
    ctx: int | None = None
    queue_size: int = 16
    threads: int | None = None
    profile: str | None = None
    max_body_bytes: int = 4 * 1024 * 1024
    api_key_file: Path | None = None
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    request_timeout: float = 600.0
    read_timeout: float = 30.0
    keep_alive: float = DEFAULT_KEEP_ALIVE  # seconds; math.inf: forever
    pin: tuple[str, ...] = ()
    memory_budget: int | None = None  # bytes
    embed_exact: bool = False  # the same embedding alone or in a batch (edge.engine.embed)
    embed_max_inputs: int = 256
    embed_max_tokens: int = 65536
    cache_ram: int = DEFAULT_CACHE_RAM_MIB  # per model; 0: no prompt cache
    cache_dir: Path | None = None
    spec: bool = True  # prompt-lookup speculative decoding (GGUF models)

    def __post_init__(self) -> None:
        _check_range("port", self.port, 0, 65535)
        _check_range("queue_size", self.queue_size, 0, 1_000_000)
        _check_range("max_body_bytes", self.max_body_bytes, 1024, 1 << 31)
        for name in ("parallel", "ctx", "threads"):
            value = getattr(self, name)
            if value is not None:
                _check_range(name, value, 1, 1 << 24)
        _check_range("cache_ram", self.cache_ram, 0, 1 << 24)
        _check_range("request_timeout", self.request_timeout, 0, 7 * 86400)
        _check_range("read_timeout", self.read_timeout, 1, 3600)
        if self.memory_budget is not None:
            _check_range("memory_budget", self.memory_budget, 1 << 20, 1 << 50)
        object.__setattr__(self, "pin", tuple(p.strip() for p in self.pin if p.strip()))
        _check_range("embed_max_inputs", self.embed_max_inputs, 1, 1 << 20)
        _check_range("embed_max_tokens", self.embed_max_tokens, 1, 1 << 30)
        if self.api_key is not None and not self.api_key.strip():
            raise BadRequestError(
                "the API key is empty: give a non-empty --api-key or unset EDGE_API_KEY", param="api_key"
            )
        if self.api_key_file is not None:
            key = read_key_file(self.api_key_file)
            if self.api_key is not None and self.api_key != key:  # equal: a copy of settings (with_)
                raise BadRequestError(
                    "give the API key once: --api-key (EDGE_API_KEY) or --api-key-file (EDGE_API_KEY_FILE), not both",
                    param="api_key_file",
                )
            object.__setattr__(self, "api_key", key)
        object.__setattr__(self, "allowed_hosts", tuple(h.strip().lower() for h in self.allowed_hosts if h.strip()))
        object.__setattr__(self, "cors_origins", tuple(o.strip().rstrip("/") for o in self.cors_origins if o.strip()))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then EDGE_* variables, then `overrides` that are not None (the CLI flags)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for s in SETTINGS_HELP:
            if s.env in env and env[s.env] != "":
                parsed = _parse_env(s, env[s.env])
                # a key file that cannot be read is an error even from the environment: falling back to
                # "no key" would open the server
                if parsed is not None and (s.name == "api_key_file" or _valid(s.name, parsed)):
                    values[s.name] = parsed
        given = {k: _coerce(k, v) for k, v in overrides.items() if v is not None}
        for flag, env_twin in (("api_key", "api_key_file"), ("api_key_file", "api_key")):
            if flag in given:
                values.pop(env_twin, None)  # a key flag replaces whichever key the environment gave
        values.update(given)
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def read_key_file(path: Path) -> str:
    """The first line of a key file, stripped; a missing, unreadable or empty file is a clear error."""
    try:
        raw = Path(path).read_bytes()[:4096]
    except OSError as exc:
        raise BadRequestError(
            f"cannot read the API key file {path}: {exc.strerror}; check --api-key-file / EDGE_API_KEY_FILE",
            param="api_key_file",
        ) from None
    lines = raw.decode("utf-8", "replace").strip().splitlines()
    key = lines[0].strip() if lines else ""
    if not key:
        raise BadRequestError(
            f"the API key file {path} is empty: write the key on its first line", param="api_key_file"
        )
    mode = Path(path).stat().st_mode
    if mode & 0o077:
        print(
            f"warning: the API key file {path} is readable by other users (mode {mode & 0o777:o}); chmod 600 {path}",
            file=sys.stderr,
        )
    return key


def _field_type(name: str) -> str:
    """The field's annotation as written (a string: this module defers annotations)."""
    return next(str(f.type) for f in fields(Settings) if f.name == name)


def _coerce(name: str, value: Any) -> Any:
    if name in _PARSERS:
        return _PARSERS[name](value, param=name)
    kind = _field_type(name)
    if "Path" in kind:
        return Path(value).expanduser()
    if "tuple" in kind:
        return tuple(value.split(",")) if isinstance(value, str) else tuple(value)
    if "float" in kind and not isinstance(value, (int, float)):
        try:
            return float(value)
        except ValueError:
            raise BadRequestError(f"{name} must be a number of seconds, got {value!r}", param=name) from None
    if "int" in kind and not isinstance(value, int):
        try:
            return int(value)
        except ValueError:
            raise BadRequestError(f"{name} must be an integer, got {value!r}", param=name) from None
    return value


def _parse_env(s: Setting, raw: str) -> Any:
    try:
        return _coerce(s.name, raw)
    except BadRequestError as exc:
        print(f"warning: ignoring {s.env}={raw!r}: {exc.message}; using the default", file=sys.stderr)
        return None


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(value: Any, *, param: str = "keep_alive") -> float:
    """Ollama's keep_alive: a number of seconds, or a Go duration string ("5m", "1h30m", "-1s"), or a
    string of seconds ("300"). Seconds as a float; any negative value means forever (math.inf)."""
    if isinstance(value, bool):
        raise BadRequestError(f"{param} must be a duration such as 5m or a number of seconds", param=param)
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            sign, body = (-1.0, text[1:]) if text[:1] == "-" else (1.0, text.removeprefix("+"))
            parts = _DURATION_PART.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise BadRequestError(
                    f"{param} must be a duration such as 5m, 1h30m or 10s, or a number of seconds; got {value!r}",
                    param=param,
                ) from None
            seconds = sign * sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if math.isnan(seconds):
        raise BadRequestError(f"{param} must be a number of seconds, got {value!r}", param=param)
    return math.inf if seconds < 0 else seconds


_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9}
_SIZE_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tb": 10**12, "tib": 2**40}


def parse_bytes(value: Any, *, param: str = "memory_budget") -> int:
    """A size: bytes as a number, or with a unit ("2GiB", "1500MB", "512 MiB"; K/M/G are decimal)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]*)\s*", str(value))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise BadRequestError(f"{param} must be a size such as 2GiB or 1500MB, got {value!r}", param=param)
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_switch(value: Any, *, param: str) -> bool:
    """A switch: a bool, or on/off, true/false, yes/no, 1/0 (any case)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise BadRequestError(f"{param} must be on or off (true/false, 1/0), got {value!r}", param=param)


_PARSERS = {
    "keep_alive": parse_duration,
    "memory_budget": parse_bytes,
    "spec": parse_switch,
    "embed_exact": parse_switch,
}


def _valid(name: str, value: Any) -> bool:
    try:
        Settings(**{name: value})
    except BadRequestError as exc:
        print(f"warning: ignoring the environment value for {name}: {exc.message}; using the default", file=sys.stderr)
        return False
    return True


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise BadRequestError(f"{name} must be between {lo} and {hi}, got {value}", param=name)
