"""Prometheus metrics, one registry per app (no global state: tests run several apps in one process)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from edge.lightimport import submodule

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
else:
    # prometheus_client's package __init__ also imports its exposition module (http.server, wsgiref,
    # urllib...: some 30 ms of a cold start on a 2-core box), needed only when /metrics is scraped
    _core = submodule("prometheus_client", "core")
    CollectorRegistry, Counter, Gauge, Histogram = _core.CollectorRegistry, _core.Counter, _core.Gauge, _core.Histogram
    CounterMetricFamily, GaugeMetricFamily = _core.CounterMetricFamily, _core.GaugeMetricFamily

from edge.engine.base import Finish

# The prompt cache's figures, read from the engine's stats() at scrape time: (stats key, name, help).
PROMPT_CACHE_COUNTERS = (
    ("hits", "edge_prompt_cache_hits", "requests that restored a cached prompt state"),
    ("tokens_restored", "edge_prompt_cache_restored_tokens", "prompt tokens restored instead of evaluated"),
    ("saves", "edge_prompt_cache_saves", "prompt states copied into the cache"),
    ("evictions", "edge_prompt_cache_evictions", "states dropped from memory to stay within the budget"),
    ("disk_writes", "edge_prompt_cache_disk_writes", "states written to the cache folder"),
    ("disk_loads", "edge_prompt_cache_disk_loads", "states read back from the cache folder"),
    ("disk_rejected", "edge_prompt_cache_disk_rejected", "cache files ignored: damaged, truncated or foreign"),
)
# Speculative decoding (edge.engine.speculative), from the same stats().
SPEC_COUNTERS = (
    ("spec_drafted", "edge_spec_drafted_tokens", "tokens drafted from the requests' own context and verified"),
    ("spec_accepted", "edge_spec_accepted_tokens", "drafted tokens accepted (each spared one decode step)"),
    (
        "spec_turned_off",
        "edge_spec_turned_off_requests",
        "requests whose drafts did not pay (more drafts declined than tokens accepted)",
    ),
)
PROMPT_CACHE_GAUGES = (
    ("cache_bytes", "edge_prompt_cache_bytes", "bytes of prompt states held in memory"),
    ("cache_entries", "edge_prompt_cache_entries", "prompt states known (in memory or on disk)"),
    ("cache_budget_bytes", "edge_prompt_cache_budget_bytes", "memory budget of the prompt cache"),
)


class _EngineFigures:
    """A collector of the engine's own counters (prompt cache, speculation), read when /metrics is scraped."""

    def __init__(self, stats: Callable[[], dict]):
        self.stats = stats

    def collect(self):
        s = self.stats()
        for key, name, doc in PROMPT_CACHE_COUNTERS + SPEC_COUNTERS:
            if key in s:
                yield CounterMetricFamily(name, doc, value=s[key])
        for key, name, doc in PROMPT_CACHE_GAUGES:
            if key in s:
                yield GaugeMetricFamily(name, doc, value=s[key])


# Time to first token: from the request reaching the handler to the first generated text.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Mean time per generated token of one request (decode speed as the client sees it).
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class _PerModel:
    """Gauges read from the model manager at scrape time: one sample per model in memory."""

    def __init__(self, rows: Callable[[], list[dict]]):
        self.rows = rows

    def describe(self):
        return []

    def collect(self):
        rows = self.rows()
        families = {
            "loaded": GaugeMetricFamily("edge_model_loaded", "1 when the model is loaded", labels=["model"]),
            "loading": GaugeMetricFamily("edge_model_loading", "1 while the model loads", labels=["model"]),
            "in_flight": GaugeMetricFamily(
                "edge_model_requests_in_flight", "requests holding the model", labels=["model"]
            ),
            "memory": GaugeMetricFamily(
                "edge_model_memory_bytes", "memory the model takes (the planner's estimate)", labels=["model"]
            ),
        }
        for row in rows:
            name = [row["model"]]
            families["loaded"].add_metric(name, 1.0 if row["state"] == "loaded" else 0.0)
            families["loading"].add_metric(name, 1.0 if row["state"] == "loading" else 0.0)
            families["in_flight"].add_metric(name, row["requests_in_flight"])
            families["memory"].add_metric(name, row["memory_bytes"])
        yield from families.values()


class Metrics:
    def __init__(self, stats: Callable[[], dict], models: Callable[[], list[dict]] = list):
        """`stats` returns the loaded engines' {"slots", "busy", "queued"} added up; `models` the
        manager's rows (edge.server.models.Loaded.row) for the per-model gauges."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.model_loads = Counter("edge_model_loads", "models loaded, by model", ["model"], registry=r)
        self.model_unloads = Counter(
            "edge_model_unloads",
            "models unloaded, by model and reason (expired, evicted...)",
            ["model", "reason"],
            registry=r,
        )
        r.register(_PerModel(models))
        self.requests = Counter(
            "edge_requests", "HTTP requests by route template and status", ["route", "status"], registry=r
        )
        self.prompt_tokens = Counter("edge_prompt_tokens", "prompt tokens received", registry=r)
        self.cached_tokens = Counter(
            "edge_prompt_cached_tokens", "prompt tokens served from a slot's KV cache", registry=r
        )
        self.generated_tokens = Counter("edge_generated_tokens", "tokens generated", registry=r)
        self.ttft = Histogram(
            "edge_time_to_first_token_seconds", "time to first token", buckets=TTFT_BUCKETS, registry=r
        )
        self.per_token = Histogram(
            "edge_time_per_output_token_seconds",
            "mean decode time per generated token",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.cancelled = Counter(
            "edge_generations_cancelled", "generations cancelled by a client disconnect", registry=r
        )
        queue = Gauge("edge_queue_depth", "requests waiting for a slot", registry=r)
        busy = Gauge("edge_busy_slots", "slots generating now", registry=r)
        slots = Gauge("edge_slots", "slots loaded", registry=r)
        queue.set_function(lambda: stats().get("queued", 0))
        busy.set_function(lambda: stats().get("busy", 0))
        slots.set_function(lambda: stats().get("slots", 0))
        r.register(_EngineFigures(stats))

    def observe_request(self, route: str, status: int) -> None:
        self.requests.labels(route=route, status=str(status)).inc()

    def observe_finish(self, fin: Finish) -> None:
        self.prompt_tokens.inc(fin.prompt_tokens)
        self.cached_tokens.inc(fin.cached_tokens)
        self.generated_tokens.inc(fin.completion_tokens)
        if fin.completion_tokens > 0 and fin.eval_ns > 0:
            self.per_token.observe(fin.eval_ns / fin.completion_tokens / 1e9)
        if fin.reason == "cancelled":
            self.cancelled.inc()

    def render(self) -> bytes:
        return submodule("prometheus_client", "exposition").generate_latest(self.registry)


def __getattr__(name: str):
    """CONTENT_TYPE_LATEST (for the /metrics route), from the exposition module imported on first use."""
    if name == "CONTENT_TYPE_LATEST":
        return submodule("prometheus_client", "exposition").CONTENT_TYPE_LATEST
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
