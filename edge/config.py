"""Typed server settings: one table of (field, environment variable, default, help).

Precedence: command-line flag > environment variable > default. A bad environment value warns on
stderr and falls back to the default (a typo in a service file must not stop a kiosk from booting);
a bad flag is a `BadRequestError` (the person typing it is there to fix it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from edge.errors import BadRequestError

DEFAULT_HOST = "127.0.0.1"  # loopback only, as llama-server; expose on purpose with --host 0.0.0.0
DEFAULT_PORT = 11434  # Ollama's port: Ollama clients and `curl localhost:11434/api/generate` work unchanged


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
    Setting("model", "EDGE_MODEL", "model to serve: a store name or a .gguf path (default: bundled SmolLM2)"),
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
        "MiB of earlier prompts' KV states kept in memory (default: half the budget the model leaves, "
        "at most 2048; 0: off)",
    ),
    Setting("cache_dir", "EDGE_CACHE_DIR", "folder where cached prompt states persist (default HOME/cache/prompts)"),
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
)


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
    cache_ram: int | None = None
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        _check_range("port", self.port, 0, 65535)
        _check_range("queue_size", self.queue_size, 0, 1_000_000)
        _check_range("max_body_bytes", self.max_body_bytes, 1024, 1 << 31)
        for name in ("parallel", "ctx", "threads"):
            value = getattr(self, name)
            if value is not None:
                _check_range(name, value, 1, 1 << 24)
        if self.cache_ram is not None:
            _check_range("cache_ram", self.cache_ram, 0, 1 << 24)
        _check_range("request_timeout", self.request_timeout, 0, 7 * 86400)
        _check_range("read_timeout", self.read_timeout, 1, 3600)
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
    return next(f.type for f in fields(Settings) if f.name == name)


def _coerce(name: str, value: Any) -> Any:
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
    except BadRequestError:
        print(f"warning: ignoring {s.env}={raw!r}: not a number; using the default", file=sys.stderr)
        return None


def _valid(name: str, value: Any) -> bool:
    try:
        Settings(**{name: value})
    except BadRequestError as exc:
        print(f"warning: ignoring the environment value for {name}: {exc.message}; using the default", file=sys.stderr)
        return False
    return True


def _check_range(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise BadRequestError(f"{name} must be between {lo} and {hi}, got {value}", param=name)
