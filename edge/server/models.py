"""Which models this server holds in memory: loaded on demand within a memory budget.

Handlers never load anything: they ask `ModelManager.lease(name)` for an engine. A lease counts
the request in flight until it is released (for a streamed answer, when the last byte went out);
a model with requests in flight is never evicted nor closed under them.

- The first request naming a model loads it in a thread; concurrent requests for it wait for that
  one load (one `Loaded` entry per file, made before anything is awaited).
- What a model takes is the planner's estimate at the context and slots it is loaded with
  (`edge.fit.model_need`, from the GGUF header alone), so deciding to evict never needs a load.
- A model that does not fit next to the loaded ones evicts idle ones, least recently used first,
  and only when that makes room; otherwise the request waits (at most `queue_size` of them, each up
  to `wait_s`) for a release, then gets 503 with Retry-After. A model that cannot fit even alone
  is refused at once with the planner's numbers (DoesNotFitError).
- After its last request a model stays for its keep_alive (the request's, else the server's):
  0 unloads at once, math.inf never. Pinned models (`edge serve MODEL`, `--pin`) stay for the
  server's life whatever a request says.

Everything here runs on the event loop; only loading and closing engines run in threads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.config import Settings, edge_home
from edge.engine.base import Adapter, AdapterEngine, Engine
from edge.errors import BadRequestError, DoesNotFitError, ModelNotFoundError, QueueFullError, UnavailableError
from edge.server.catalog import rfc3339

log = logging.getLogger("edge.server")
WAIT_S = 300.0  # longest a request waits for memory held by busy models (bounded by request_timeout too)
RETRY_AFTER_S = 5  # what a 503 for memory suggests: long enough for an answer or two to finish
FOREVER = "2999-12-31T23:59:59Z"  # expires_at of a model that never expires


@dataclass(frozen=True)
class Target:
    """A model clients can ask for: the name they use and the file."""

    name: str
    path: Path
    modified: float
    size_bytes: int
    adapter: Path | None = None  # a LoRA applied per request on the model at `path` ("base+adapter")
    adapter_scale: float = 1.0
    base_name: str | None = None  # the model's own name when `adapter` is set

    @property
    def key(self) -> str:
        """The loaded model: one per file, shared by the base and all its adapters."""
        return str(self.path.resolve())

    def base(self) -> Target:
        """The model without its adapter (what is loaded)."""
        if self.adapter is None:
            return self
        return Target(self.base_name or self.path.stem, self.path, self.modified, self.size_bytes)


def resolve_target(spec: str | None, store) -> Target:
    """A .gguf path or a store name (None: the store's default, the bundled SmolLM2). Raises at once.

    A path to a file the store knows is served under the store's name."""
    if spec and (spec.endswith(".gguf") or "/" in spec) and Path(spec).expanduser().exists():
        path = Path(spec).expanduser().resolve()
        st = path.stat()
        known = next((e.name for e in store.list() if Path(e.path).resolve() == path), None)
        return Target(name=known or path.stem, path=path, modified=st.st_mtime, size_bytes=st.st_size)
    entry = store.resolve(spec) if spec else store.default()
    return _target(entry)


def _target(entry) -> Target:
    """The Target of a store entry (a ModelEntry)."""
    return Target(
        entry.name, Path(entry.path), entry.modified, entry.size_bytes, entry.adapter, entry.adapter_scale, entry.base
    )


def open_target(opener: Callable[..., Engine], target: Target, settings: Settings) -> Engine:
    """The engine for `target` with the server's context, slots, threads and queue."""
    return opener(
        target.path,
        name=target.name,
        n_ctx=settings.ctx,
        n_parallel=settings.parallel or 1,
        n_threads=settings.threads,
        queue_size=settings.queue_size,
        cache_ram_bytes=settings.cache_ram << 20,
        cache_dir=settings.cache_dir or (settings.home or edge_home()) / "cache" / "prompts",
        speculative=settings.spec,
        embed_exact=settings.embed_exact,
    )


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 128 << 10  # glibc's default, held fixed (see _libc)


@functools.cache
def _libc():
    """glibc, set up so that a server that loads and unloads models all day does not grow; None when the
    C library is not glibc (musl, macOS).

    By default glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), so
    the next model's KV cache and compute buffers come from a thread's heap, whose top neither free() nor
    malloc_trim hands back: RSS after an unload then depends on which thread loaded what. A fixed
    threshold keeps every large buffer in an mmap of its own, returned when llama.cpp frees it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.malloc_trim  # noqa: B018 (glibc only: AttributeError elsewhere)
    except (OSError, AttributeError):
        return None
    return libc


def _close_engine(engine: Engine) -> None:
    """Close an engine (llama.cpp frees its weights, KV cache and buffers), then hand the small blocks
    freed back to the system: glibc keeps them in the closing thread's arena otherwise."""
    engine.close()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class Loaded:
    """One model in memory (or being loaded into it)."""

    def __init__(self, target: Target, need_bytes: int, n_ctx: int | None, keep_alive: float, pinned: bool):
        self.target, self.need_bytes, self.n_ctx = target, need_bytes, n_ctx
        self.keep_alive, self.pinned = keep_alive, pinned
        self.engine: Engine | None = None
        self.template = None
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.in_flight = 0
        self.waiters = 0  # requests waiting for its load
        self.last_used = time.monotonic()
        self.expires_at: float | None = None  # wall-clock seconds; None while in use or kept forever
        self.timer: asyncio.TimerHandle | None = None
        self.closing = False
        self._load_reported = False

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def state(self) -> str:
        return "unloading" if self.closing else "loaded" if self.engine is not None else "loading"

    def evictable(self) -> bool:
        return self.engine is not None and not self.closing and not self.pinned and self.in_flight == 0

    def take_load_ns(self) -> int:
        """The load time for the first answer after loading (where Ollama would have loaded it), then 0."""
        if self._load_reported or self.engine is None:
            return 0
        self._load_reported = True
        return int(getattr(self.engine, "load_ns", 0))

    def row(self) -> dict:
        """What /health and /api/ps say about it."""
        return {
            "model": self.name,
            "state": self.state,
            "pinned": self.pinned,
            "requests_in_flight": self.in_flight,
            "memory_bytes": self.need_bytes,
            "context_length": self.engine.info.n_ctx if self.engine is not None else self.n_ctx,
            "expires_at": self.expires_text(),
        }

    def expires_text(self) -> str:
        """When it unloads, RFC 3339 (Ollama's /api/ps): its timer, or (in use) keep_alive from now."""
        if self.pinned or math.isinf(self.keep_alive):
            return FOREVER
        return rfc3339(self.expires_at if self.expires_at is not None else time.time() + self.keep_alive)


class Lease:
    """A model held for one request: `async with manager.lease(name) as lease: lease.engine ...`.

    The model is loaded (or waited for) on entry and counted in flight until exit. `release()` may be
    called directly, once; a streamed answer releases when its response ends (see app._Guard)."""

    def __init__(
        self, manager: ModelManager, name: str | None, keep_alive: float | None, lora_scale: float | None = None
    ):
        self._manager, self._name, self._keep_alive = manager, name, keep_alive
        self._lora_scale = lora_scale  # the body's scale for the name's adapter (validated by the route's model)
        self.model: Loaded | None = None
        self.requested: Target | None = None  # the name asked for (with its adapter, if any)

    async def __aenter__(self) -> Lease:
        self.requested = await asyncio.to_thread(self._manager.resolve, self._name)
        if self._lora_scale is not None:
            self.requested = _with_scale(self.requested, self._lora_scale)
        self.model = await self._manager._acquire(self._name, self._keep_alive, self.requested)
        return self

    async def __aexit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        model, self.model = self.model, None
        if model is not None:
            self._manager._release(model, self._keep_alive)

    # what handlers read
    @property
    def engine(self) -> Engine:
        """The model's engine; under the requested LoRA adapter, if the name carried one."""
        assert self.model is not None and self.model.engine is not None
        t = self.requested
        if t is not None and t.adapter is not None:
            return AdapterEngine(self.model.engine, Adapter(str(t.adapter), t.adapter_scale))  # type: ignore[return-value]
        return self.model.engine

    @property
    def template(self):
        assert self.model is not None
        return self.model.template

    @property
    def target(self) -> Target:
        assert self.model is not None
        return self.requested if self.requested is not None and self.requested.adapter else self.model.target

    @property
    def name(self) -> str:
        return self.target.name

    def take_load_ns(self) -> int:
        return self.model.take_load_ns() if self.model is not None else 0


LEASES = "edge.leases"  # the ASGI scope key of a request's leases (released by app._Guard)


def _with_scale(target: Target, scale: float) -> Target:
    """`target` with its LoRA adapter at `scale`; a 400 when the name carries no adapter."""
    if target.adapter is None:
        raise BadRequestError(
            f"a LoRA scale was given but the model {target.name!r} carries no adapter; "
            "name one as base+adapter (GET /v1/models lists them)",
            param="model",
        )
    return dataclasses.replace(target, adapter_scale=scale)


async def model_for(
    request, name: str | None, keep_alive: float | None = None, lora_scale: float | None = None
) -> Lease:
    """The model a request names, loaded and held until the whole response is sent (a streamed
    answer included): app._Guard, the outermost middleware, releases it however the response ends.
    `lora_scale` replaces the scale of the adapter the name carries."""
    lease = await request.app.state.edge.models.lease(name, keep_alive, lora_scale).__aenter__()
    request.scope.setdefault(LEASES, []).append(lease)
    return lease


class ModelManager:
    """One per app. `need(target)` gives a model's context and memory (edge.fit.model_need)."""

    def __init__(
        self,
        settings: Settings,
        store,
        opener: Callable[..., Engine],
        need: Callable[[Target], tuple[int | None, int]],
        capacity_bytes: int,
        *,
        metrics=None,
        wait_s: float = WAIT_S,
    ):
        self.settings, self.store, self._opener, self._need_of = settings, store, opener, need
        self.capacity_bytes = capacity_bytes
        self.metrics = metrics
        self.wait_s = min(wait_s, settings.request_timeout) if settings.request_timeout > 0 else wait_s
        self.models: dict[str, Loaded] = {}  # by file (Target.key)
        _libc()  # before the first load: see there
        self.unloading: list[Loaded] = []  # out of `models`, engines still closing
        self.primary: Target | None = None  # the model `edge serve MODEL` named: what a request without a name gets
        self.pinned: dict[str, Target] = {}
        self._openers: dict[str, Callable[..., Engine]] = {}  # a first load that already started (EarlyLoad)
        self._needs: dict[tuple, tuple[int | None, int]] = {}
        self._closing_bytes = 0
        self._waiting = 0
        self._changed: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()
        self.loads = 0  # engines opened since start (every model)
        self.on_loaded: Callable[[Engine], None] | None = None  # for the primary model, in the loader thread
        self.on_load_error: Callable[[BaseException], None] | None = None
        self.preload_error: BaseException | None = None
        self.preloading = False

    # -- naming ----------------------------------------------------------------------------------
    def pin(self, target: Target, *, primary: bool = False, opener: Callable[..., Engine] | None = None) -> None:
        """Keep `target` loaded for the server's life (loaded by `preload()`)."""
        self.pinned[target.key] = target
        if primary:
            self.primary = target
        if opener is not None:
            self._openers[target.key] = opener

    def resolve(self, name: str | None) -> Target:
        """The model a request names (an alias, `name:latest`, a pinned file's name or path); no
        name: the primary model, else the store's default. A 404 lists what is available."""
        if not name:
            return self.primary or resolve_target(None, self.store)
        kept = [*self.pinned.values(), *(m.target for m in self.models.values())]
        for t in kept:
            if name in (t.name, t.path.stem, str(t.path)):
                return t
        base, plus, spec = name.partition("+")
        onnx = next((t for t in kept if base in (t.name, t.path.stem, str(t.path)) and t.path.is_dir()), None)
        if plus and onnx is not None:  # the store refuses its own ONNX folders alike (ModelStore.resolve)
            raise BadRequestError(
                f"{onnx.name} is an ONNX model: LoRA adapters apply to GGUF models only; "
                f"serve {spec.partition('@')[0]!r} on the GGUF form of the model",
                param="model",
            )
        try:  # a store name only: a request never names a path on this machine
            entry = self.store.resolve(name)
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(f"model {name!r} is not served here: {exc.message}", param="model") from None
        return _target(entry)

    def loaded_info(self, path: Path):
        """The engine's ModelInfo when that file is loaded, else None."""
        m = self.models.get(str(Path(path).resolve()))
        return m.engine.info if m is not None and m.engine is not None else None

    # -- leases ----------------------------------------------------------------------------------
    def lease(self, name: str | None, keep_alive: float | None = None, lora_scale: float | None = None) -> Lease:
        return Lease(self, name, keep_alive, lora_scale)

    async def _acquire(self, name: str | None, keep_alive: float | None, target: Target | None = None) -> Loaded:
        if target is None:
            target = await asyncio.to_thread(self.resolve, name)
        target = target.base()
        n_ctx, need = await self._need(target)
        loop = asyncio.get_running_loop()
        deadline = None
        while True:
            m = self.models.get(target.key)
            if m is not None and not m.closing:
                if not m.ready.done():
                    await self._wait_for_load(m)
                    continue
                m.in_flight += 1
                m.last_used = time.monotonic()
                m.expires_at = None
                if m.timer is not None:
                    m.timer.cancel()
                    m.timer = None
                if keep_alive is not None:
                    m.keep_alive = keep_alive
                return m
            if self._make_room(target, need):
                self._start_load(target, n_ctx, need, keep_alive)
                continue
            if deadline is None:
                if self._waiting >= self.settings.queue_size:
                    raise QueueFullError(
                        f"no memory for {target.name}: the loaded models are busy and {self._waiting} requests "
                        "already wait for memory; retry later",
                        retry_after=RETRY_AFTER_S,
                    )
                deadline = loop.time() + self.wait_s
            await self._wait_for_change(target, deadline - loop.time())

    async def _wait_for_load(self, m: Loaded) -> None:
        """Wait for the one load of `m` in progress; raises what it raised. The waiters are counted so
        that the load does not start the keep_alive of a model about to be used (keep_alive 0 would
        unload it under them); the last waiter to give up starts it."""
        m.waiters += 1
        try:
            await asyncio.shield(m.ready)
        except asyncio.CancelledError:
            if m.waiters == 1 and m.in_flight == 0 and m.ready.done() and m.ready.exception() is None:
                self._schedule_expiry(m)
            raise
        finally:
            m.waiters -= 1

    async def _wait_for_change(self, target: Target, seconds: float) -> None:
        if seconds <= 0:
            raise UnavailableError(self._busy_message(target), retry_after=RETRY_AFTER_S)
        changed = self._changed_event()
        self._waiting += 1
        try:
            await asyncio.wait_for(changed.wait(), seconds)
        except TimeoutError:
            raise UnavailableError(self._busy_message(target), retry_after=RETRY_AFTER_S) from None
        finally:
            self._waiting -= 1

    def _busy_message(self, target: Target) -> str:
        busy = ", ".join(f"{m.name} ({m.in_flight} in flight)" for m in self.models.values()) or "none"
        return (
            f"no memory for {target.name} yet: the models loaded ({busy}) are answering and the "
            f"{self.capacity_bytes / 2**30:.2f} GiB budget holds no more; retry later"
        )

    def _release(self, m: Loaded, keep_alive: float | None) -> None:
        m.in_flight -= 1
        m.last_used = time.monotonic()
        if keep_alive is not None:
            m.keep_alive = keep_alive
        if m.in_flight == 0:
            self._schedule_expiry(m)
        self._notify()

    def _schedule_expiry(self, m: Loaded) -> None:
        if m.pinned or m.closing or m.engine is None or math.isinf(m.keep_alive):
            return
        if m.keep_alive <= 0:
            self._unload(m, "keep_alive")
            return
        m.expires_at = time.time() + m.keep_alive
        m.timer = asyncio.get_running_loop().call_later(m.keep_alive, self._expire, m)

    def _expire(self, m: Loaded) -> None:
        m.timer = None
        if m.evictable() and self.models.get(m.target.key) is m:
            self._unload(m, "expired")

    # -- memory ----------------------------------------------------------------------------------
    async def _need(self, target: Target) -> tuple[int | None, int]:
        key = (target.key, target.size_bytes, target.modified)
        if key not in self._needs:
            self._needs[key] = await asyncio.to_thread(self._need_of, target)
        n_ctx, need = self._needs[key]
        pinned = sum(self._need_cached(t) for k, t in self.pinned.items() if k != target.key)
        if need + pinned > self.capacity_bytes:
            raise DoesNotFitError(
                f"{target.name} needs {need / 2**30:.2f} GiB at context {n_ctx}, and the pinned models hold "
                f"{pinned / 2**30:.2f} GiB of the {self.capacity_bytes / 2**30:.2f} GiB the models may use; "
                "unpin a model, raise --memory-budget or lower --ctx"
            )
        return n_ctx, need

    def _need_cached(self, target: Target) -> int:
        return self._needs.get((target.key, target.size_bytes, target.modified), (None, 0))[1]

    def used_bytes(self) -> int:
        return sum(m.need_bytes for m in self.models.values()) + self._closing_bytes

    def _make_room(self, target: Target, need: int) -> bool:
        """True when `need` fits now, after evicting idle models (least recently used first) if that
        is enough; nothing is evicted when it would not be."""
        free = self.capacity_bytes - self.used_bytes()
        if need <= free:
            return True
        idle = sorted((m for m in self.models.values() if m.evictable()), key=lambda m: m.last_used)
        if free + sum(m.need_bytes for m in idle) < need:
            return False
        for m in idle:
            if free >= need:
                break
            log.info("evicting %s (idle) to load %s", m.name, target.name)
            self._unload(m, "evicted")
            free += m.need_bytes  # counted as used until closed: the new load waits for that (_load)
        return True

    # -- loading and unloading ---------------------------------------------------------------------
    def _start_load(self, target: Target, n_ctx: int | None, need: int, keep_alive: float | None) -> None:
        pinned = target.key in self.pinned
        ka = self.settings.keep_alive if keep_alive is None else keep_alive
        m = Loaded(target, need, n_ctx, ka, pinned)
        self.models[target.key] = m
        self._spawn(self._load(m))

    async def _load(self, m: Loaded) -> None:
        from edge.chat.templates import ChatTemplate

        opener = self._openers.pop(m.target.key, self._opener)
        settings = self.settings.with_(ctx=m.n_ctx)
        primary = self.primary is not None and m.target.key == self.primary.key

        def open_and_check():
            engine = open_target(opener, m.target, settings)
            try:
                template = ChatTemplate.for_model(engine.info)
                if primary and self.on_loaded:
                    self.on_loaded(engine)
            except BaseException:
                engine.close()
                raise
            return engine, template

        while self._closing_bytes > 0 and self.used_bytes() > self.capacity_bytes:
            await self._changed_event().wait()  # the models evicted for this one are closed first
        try:
            m.engine, m.template = await asyncio.to_thread(open_and_check)
        except BaseException as exc:
            if self.models.get(m.target.key) is m:
                del self.models[m.target.key]
            m.ready.set_exception(exc)
            m.ready.exception()  # marked retrieved: the waiters re-raise it, and there may be none
            log.error("loading %s failed: %s", m.name, exc)
            self._notify()
            return
        self.loads += 1
        if self.metrics is not None:
            self.metrics.model_loads.labels(model=m.name).inc()
        from edge.server.catalog import capabilities, facts_from_info, tool_format

        facts = facts_from_info(m.engine.info)
        log.info(
            "loaded %s (context %d, %.0f MiB planned; tool-call format %s, capabilities %s)",
            m.name,
            m.engine.info.n_ctx,
            m.need_bytes / 2**20,
            tool_format(facts),
            capabilities(facts),
        )
        m.ready.set_result(None)
        self._notify()
        if m.in_flight == 0 and m.waiters == 0:  # every request that asked for it gave up
            self._schedule_expiry(m)

    def _unload(self, m: Loaded, reason: str) -> asyncio.Task:
        """Take `m` out of the table now; its memory counts as used until the engine is closed."""
        if m.timer is not None:
            m.timer.cancel()
            m.timer = None
        m.closing = True
        if self.models.get(m.target.key) is m:
            del self.models[m.target.key]
        self._closing_bytes += m.need_bytes
        self.unloading.append(m)
        if self.metrics is not None:
            self.metrics.model_unloads.labels(model=m.name, reason=reason).inc()

        async def close() -> None:
            try:
                if m.engine is not None:
                    await asyncio.to_thread(_close_engine, m.engine)
            finally:
                m.engine = None
                self._closing_bytes -= m.need_bytes
                self.unloading.remove(m)
                log.info("unloaded %s (%s)", m.name, reason)
                self._notify()

        return self._spawn(close())

    async def unload(self, name: str | None) -> tuple[Target, bool]:
        """Unload a model now (an empty request with keep_alive 0); one with requests in flight goes
        when they end. False when the model is pinned: it stays."""
        target = await asyncio.to_thread(self.resolve, name)
        if target.key in self.pinned:
            return target, False
        m = self.models.get(target.key)
        if m is not None and not m.ready.done():
            await asyncio.gather(self._wait_for_load(m), return_exceptions=True)
        m = self.models.get(target.key)
        if m is None:
            return target, True
        m.keep_alive = 0.0
        if m.in_flight == 0:
            await self._unload(m, "keep_alive")
        return target, True

    async def preload(self) -> None:
        """Load the pinned models, the primary first. A failure is kept for /health and reported to
        `on_load_error` (`edge serve` then stops: a model it was told to keep cannot be served)."""
        order = sorted(self.pinned.values(), key=lambda t: self.primary is None or t.key != self.primary.key)
        self.preloading = True
        try:
            for target in order:
                async with self.lease(target.name):
                    pass
        except Exception as exc:
            self.preload_error = exc
            log.error("cannot load %s: %s", target.name, exc)
            if self.on_load_error:
                self.on_load_error(exc)
        finally:
            self.preloading = False

    async def aclose(self) -> None:
        """Wait for loads in progress, then close every engine."""
        for task in list(self._tasks):
            await asyncio.gather(task, return_exceptions=True)
        for m in list(self.models.values()):
            self._unload(m, "shutdown")
        for task in list(self._tasks):
            await asyncio.gather(task, return_exceptions=True)

    # -- what /health, /metrics and /api/ps read ----------------------------------------------------
    def in_memory(self) -> list[Loaded]:
        """Every model holding memory: loading, loaded, or still closing."""
        return sorted([*self.models.values(), *self.unloading], key=lambda m: m.name)

    def rows(self) -> list[dict]:
        return [m.row() for m in self.in_memory()]

    def stats(self) -> dict:
        """The engines' counters added up (slots, busy, queued, requests, tokens)."""
        total: dict = {"slots": 0, "busy": 0, "queued": 0}
        for m in list(self.models.values()):
            if m.engine is None:
                continue
            for k, v in m.engine.stats().items():
                if isinstance(v, int) and k not in ("n_ctx", "threads"):
                    total[k] = total.get(k, 0) + v
        return total

    def engine_stats(self) -> dict[str, dict]:
        return {m.name: m.engine.stats() for m in list(self.models.values()) if m.engine is not None}

    # -- plumbing ------------------------------------------------------------------------------------
    def _changed_event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _notify(self) -> None:
        """Wake every waiter: memory was freed, a load ended or a request finished."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
