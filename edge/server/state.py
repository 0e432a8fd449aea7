"""What the server serves: the model it resolved at start, loaded in the background.

Kept apart from the handlers: the handlers ask `engine_for(name)` and never load anything.
The socket is bound first, then the model loads in a thread; /health says 503 until it is ready.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.config import Settings
from edge.engine.base import Engine
from edge.errors import EdgeError, ModelLoadingError, ModelNotFoundError
from edge.server.metrics import Metrics
from edge.store import default_home


@dataclass(frozen=True)
class Target:
    """The model this server serves: the name clients use and the file."""

    name: str
    path: Path
    modified: float
    size_bytes: int


def resolve_target(settings: Settings, store) -> Target:
    """A .gguf path or a store name (None: the store's default, the bundled SmolLM2). Raises at once.

    A path to a file the store knows is served under the store's name."""
    spec = settings.model
    if spec and (spec.endswith(".gguf") or "/" in spec) and Path(spec).expanduser().exists():
        path = Path(spec).expanduser().resolve()
        st = path.stat()
        known = next((e.name for e in store.list() if Path(e.path).resolve() == path), None)
        return Target(name=known or path.stem, path=path, modified=st.st_mtime, size_bytes=st.st_size)
    entry = store.resolve(spec) if spec else store.default()
    return Target(name=entry.name, path=Path(entry.path), modified=entry.modified, size_bytes=entry.size_bytes)


def open_target(opener: Callable[..., Engine], target: Target, settings: Settings) -> Engine:
    """The engine for `target` with the server's context, slots, threads and queue."""
    return opener(
        target.path,
        name=target.name,
        n_ctx=settings.ctx,
        n_parallel=settings.parallel or 1,
        n_threads=settings.threads,
        queue_size=settings.queue_size,
        cache_ram_bytes=(settings.cache_ram or 0) << 20,
        cache_dir=settings.cache_dir or (settings.home or default_home()) / "cache" / "prompts",
    )


class EarlyLoad:
    """Opens the model in a thread from the moment it is made; `result(...)` (the app's opener)
    waits for it and returns the engine or raises what opening raised."""

    def __init__(self, target: Target, settings: Settings, opener: Callable[..., Engine] | None = None):
        if opener is None:
            from edge.engine import open_engine as opener
        self._done = threading.Event()
        self._engine: Engine | None = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._engine = open_target(opener, target, settings)
            except BaseException as exc:
                self._error = exc
            finally:
                self._done.set()

        threading.Thread(target=run, name="edge-early-load", daemon=True).start()

    def result(self, *_args, **_kw) -> Engine:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._engine is not None
        return self._engine

    def discard(self) -> None:
        """Wait for the load to end and close what it opened (the server is not starting after all)."""
        self._done.wait()
        if self._engine is not None:
            self._engine.close()
            self._engine = None


class ServerState:
    """One per app. Thread-safe where the loader thread touches it (engine / error are set once)."""

    def __init__(self, settings: Settings, store, target: Target, opener: Callable[..., Engine]):
        self.settings = settings
        self.store = store
        self.target = target
        self._opener = opener
        self.engine: Engine | None = None
        self.template = None
        self.load_error: BaseException | None = None
        self.started_ns = time.time_ns()
        self.metrics = Metrics(self.stats)
        self._digests: dict[tuple, str] = {}
        self._lock = threading.Lock()
        self._digest_lock = threading.Lock()
        self._load_reported = False
        self.on_loaded: Callable[[Engine], None] | None = None
        self.on_load_error: Callable[[BaseException], None] | None = None

    # -- loading ---------------------------------------------------------------------------------
    def start_loading(self) -> threading.Thread:
        thread = threading.Thread(target=self.load, name="edge-model-loader", daemon=True)
        thread.start()
        return thread

    def load(self) -> None:
        from edge.chat.templates import ChatTemplate

        try:
            engine = open_target(self._opener, self.target, self.settings)
            info = engine.info
            self.template = ChatTemplate.for_model(info)
            self.engine = engine
        except BaseException as exc:
            self.load_error = exc
            if self.on_load_error:
                self.on_load_error(exc)
            return
        if self.on_loaded:
            self.on_loaded(engine)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    # -- what handlers ask -----------------------------------------------------------------------
    def require_engine(self) -> Engine:
        if self.engine is not None:
            return self.engine
        if self.load_error is not None:
            if isinstance(self.load_error, EdgeError):
                raise self.load_error
            raise EdgeError(f"the model failed to load: {self.load_error}; see the server log")
        raise ModelLoadingError(f"model {self.target.name} is still loading; retry in a moment (GET /health says when)")

    def engine_for(self, name: str | None) -> Engine:
        """The loaded engine if `name` (or an alias of it) is what this server serves; else 404."""
        if name and not self.serves(name):
            raise ModelNotFoundError(
                f"model {name!r} is not served here: this server serves {self.target.name!r} "
                f"(available in the store: {', '.join(self.available_names()) or 'none'}); "
                f"ask for {self.target.name!r} or restart with `edge serve {name}`",
                param="model",
            )
        return self.require_engine()

    def serves(self, name: str) -> bool:
        if name in (self.target.name, self.target.path.stem, str(self.target.path)):
            return True
        try:
            entry = self.store.resolve(name)
        except ModelNotFoundError:
            return False
        return Path(entry.path).resolve() == self.target.path.resolve()

    def available_names(self) -> list[str]:
        try:
            return [e.name for e in self.store.list()]
        except EdgeError:
            return []

    def take_load_ns(self) -> int:
        """The engine's load time the first time it is asked for, then 0 (see ollama._final)."""
        with self._lock:
            if self._load_reported or self.engine is None:
                return 0
            self._load_reported = True
            return int(getattr(self.engine, "load_ns", 0))

    def stats(self) -> dict:
        engine = self.engine
        return engine.stats() if engine is not None else {"slots": 0, "busy": 0, "queued": 0}

    def digest(self, path: Path, size: int, modified: float) -> str:
        """sha256 of a model file, as Ollama's digests; computed once per (path, size, mtime)."""
        key = (str(path), size, modified)
        with self._digest_lock:
            if key not in self._digests:
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                self._digests[key] = h.hexdigest()
            return self._digests[key]
