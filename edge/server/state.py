"""What the server holds: its settings, the model store, the model manager (edge.server.models) and
the metrics. Kept apart from the handlers: they ask `state.models.lease(name)` and never load anything.

`EarlyLoad` opens the model `edge serve MODEL` named in a thread before the HTTP stack is imported;
the manager takes that engine as the model's first load.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge.config import Settings
from edge.engine.base import Engine
from edge.errors import EdgeError, ModelLoadingError
from edge.fsio import sha256_file
from edge.server import models as models_mod
from edge.server.metrics import Metrics
from edge.server.models import ModelManager, Target, open_target

__all__ = ["ServerState", "EarlyLoad", "Target", "resolve_target", "open_target"]


def resolve_target(settings: Settings, store) -> Target:
    """The model `edge serve MODEL` (EDGE_MODEL) names; None: the store's default. Raises at once."""
    return models_mod.resolve_target(settings.model, store)


class EarlyLoad:
    """Opens the model in a thread from the moment it is made; `result(...)` (an opener) waits for it
    and returns the engine or raises what opening raised."""

    def __init__(self, target: Target, settings: Settings, opener: Callable[..., Engine] | None = None):
        if opener is None:
            from edge.engine import open_engine

            opener = open_engine
        open_with = opener  # the narrowed (not None) opener, for the thread below
        self._done = threading.Event()
        self._engine: Engine | None = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._engine = open_target(open_with, target, settings)
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
    """One per app: settings, store, the model manager, metrics, file digests."""

    def __init__(
        self,
        settings: Settings,
        store,
        opener: Callable[..., Engine],
        *,
        budget=None,
        preload: list[Target] | None = None,
        early: EarlyLoad | None = None,
    ):
        from edge.fit import model_need, server_budget

        self.settings = settings
        self.store = store
        self.started_ns = time.time_ns()
        self.budget = budget or server_budget(settings)
        budget = self.budget

        def need(target: Target) -> tuple[int | None, int]:
            n = model_need(settings, budget, target.path, target.size_bytes)
            return n.n_ctx, min(n.bytes, budget.model_bytes) if budget.force else n.bytes

        self.models = ModelManager(settings, store, opener, need, budget.model_bytes)
        self.metrics = Metrics(self.models.stats, self.models.rows)
        self.models.metrics = self.metrics
        for i, target in enumerate(preload or []):
            self.models.pin(target, primary=i == 0, opener=early.result if early is not None and i == 0 else None)
        self._digests: dict[tuple, str] = {}
        self._digest_lock = threading.Lock()

    def health(self) -> dict:
        """/health's body; raises while a model the server was told to keep loads (503) or failed."""
        m = self.models
        if m.preload_error is not None:
            if isinstance(m.preload_error, EdgeError):
                raise m.preload_error
            raise EdgeError(f"the model failed to load: {m.preload_error}; see the server log")
        if m.preloading or any(k not in m.models or m.models[k].engine is None for k in m.pinned):
            names = ", ".join(t.name for t in m.pinned.values())
            raise ModelLoadingError(f"model {names} is still loading; retry in a moment (GET /health says when)")
        body = {"status": "ok", **self.models.stats()}
        if m.primary is not None:
            body["model"] = m.primary.name
        per_engine = self.models.engine_stats()
        body["models"] = [{**row, **_plain(per_engine.get(row["model"], {}))} for row in self.models.rows()]
        body["memory_budget_bytes"] = m.capacity_bytes
        body["memory_used_bytes"] = m.used_bytes()
        return body

    def digest(self, path: Path, size: int, modified: float) -> str:
        """sha256 of a model file, as Ollama's digests; computed once per (path, size, mtime)."""
        key = (str(path), size, modified)
        with self._digest_lock:
            if key not in self._digests:
                self._digests[key] = sha256_file(path)
            return self._digests[key]


def _plain(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k != "heartbeat"}
