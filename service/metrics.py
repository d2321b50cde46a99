"""Prometheus metrics on a per-app `CollectorRegistry` (so tests can build many apps in one process).

The backends call `observe_graph`; the image store `observe_batch`, `set_queue_depth`, `observe_queue`,
`cache_lookup`, `embedding_lookup`, `cache_changed` and `encoder_runs.inc(n)`; a shared tier counts
`redis_errors` and `redis_bytes`; the HTTP middleware calls `observe_request`. `GET /metrics`
renders `render()` in the Prometheus text format.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "samclip"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
ENTRY_BUCKETS = tuple(float(2**k) for k in range(16, 27))  # 64 KiB .. 64 MiB

disable_created_metrics()  # no `*_created` series: they double the exposition for no use here


class Metrics:
    """All collectors of one app. Every method is cheap and thread-safe (prometheus-client locks)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._http(self.registry)
        self._encoder(self.registry)
        self._caches(self.registry)
        self.ready = Gauge(
            f"{PREFIX}_ready", "1 when the model is loaded, warm and not draining", registry=self.registry
        )

    def _http(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            f"{PREFIX}_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.request_seconds = Histogram(
            f"{PREFIX}_request_seconds",
            "HTTP request latency by endpoint and status",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(f"{PREFIX}_inflight_requests", "Requests being served now", registry=r)
        self.routing_mismatches = Counter(
            f"{PREFIX}_routing_header_mismatches",
            "Requests whose X-Image-Id routing header named another image than the one served",
            registry=r,
        )

    def _encoder(self, r: CollectorRegistry) -> None:
        self.graph_seconds = Histogram(
            f"{PREFIX}_inference_seconds",
            "Backend time per graph call (encoder, clip_head, text_encoder, sam_decoder)",
            ["graph"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_encoder_batch_size", "Images per encoder batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(f"{PREFIX}_queue_depth", "Images waiting for the encoder", registry=r)
        self.queue_seconds = Histogram(
            f"{PREFIX}_queue_seconds",
            "Time an image waited for the encoder",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.encoder_runs = Counter(f"{PREFIX}_encoder_runs", "Images passed through the encoder", registry=r)

    def _caches(self, r: CollectorRegistry) -> None:
        self.cache_hits = Counter(f"{PREFIX}_cache_hits", "Images found in a cache tier", registry=r)
        self.cache_misses = Counter(f"{PREFIX}_cache_misses", "Images found in no cache tier", registry=r)
        self.lookups = Counter(
            f"{PREFIX}_embedding_lookups",
            "Embedding lookups per tier and result",
            ["tier", "result"],
            registry=r,
        )
        self.cache_bytes = Gauge(
            f"{PREFIX}_cache_bytes", "Bytes held by the in-process image-embedding cache", registry=r
        )
        self.cache_entry_bytes = Histogram(
            f"{PREFIX}_cache_entry_bytes",
            "Bytes per cached image entry (stored or re-counted)",
            buckets=ENTRY_BUCKETS,
            registry=r,
        )
        self.redis_errors = Counter(f"{PREFIX}_redis_errors", "Failed shared-tier calls", ["op"], registry=r)
        self.redis_bytes = Counter(
            f"{PREFIX}_redis_bytes", "Bytes moved to / from the shared tier", ["direction"], registry=r
        )

    # --- called by the pipeline ----------------------------------------------------------------------------
    def observe_graph(self, graph: str, seconds: float) -> None:
        self.graph_seconds.labels(graph=graph).observe(seconds)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def set_queue_depth(self, n: int) -> None:
        self.queue_depth.set(n)

    def observe_queue(self, seconds: float) -> None:
        self.queue_seconds.observe(seconds)

    def cache_lookup(self, hit: bool) -> None:
        (self.cache_hits if hit else self.cache_misses).inc()

    def embedding_lookup(self, tier: str, hit: bool) -> None:
        self.lookups.labels(tier=tier, result="hit" if hit else "miss").inc()

    def cache_changed(self, total_bytes: int, entry_bytes: int) -> None:
        self.cache_bytes.set(total_bytes)
        self.cache_entry_bytes.observe(entry_bytes)

    # --- called by the HTTP layer ----------------------------------------------------------------------------
    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        labels = {"endpoint": endpoint, "status": str(status)}
        self.requests.labels(**labels).inc()
        self.request_seconds.labels(**labels).observe(seconds)

    # --- reading -----------------------------------------------------------------------------------------------
    def sample(self, name: str, **labels: str) -> float:
        """Current value of one sample (e.g. `sample("samclip_encoder_runs_total")`); 0.0 if absent."""
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def render(self) -> bytes:
        """Prometheus text exposition of every collector."""
        return generate_latest(self.registry)
