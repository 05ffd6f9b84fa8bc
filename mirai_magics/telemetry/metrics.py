"""Prometheus metrics of one session: its own CollectorRegistry and the `/metrics` endpoint.

Never the global registry, so `%reload_ext mirai_magics` cannot register a name twice.
Label values are model names, statuses, reasons, rules, kinds and directions only: never
prompts, keys or other free text.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Metrics as MetricsSettings

LOOPBACK = "127.0.0.1"
# incremented by the memory (memory/counters.py) once the session hands it its Telemetry
MEMORY_COUNTERS = {
    "mirai_memory_indexed": "Memory entries (cells, learned-file chunks) embedded and stored",
    "mirai_memory_cache_hits": "Memory entries whose embedding was reused from the SHA-256 cache",
    "mirai_memory_searches": "Memory searches run to build a prompt",
}


class _BreakerCollector:
    """`mirai_circuit_breaker_open{model}` read from the live breakers at scrape time."""

    def __init__(self) -> None:
        self.source: Callable[[], dict[str, str]] = dict

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "mirai_circuit_breaker_open",
            "1 while the model's circuit breaker is not closed (open, or half-open probing)",
            labels=["model"],
        )
        for model, state in sorted(self._states().items()):
            # half-open counts: a failing model alternates open 60 s / probe / open 30 s,
            # and "open for 1m" must still hold for it
            family.add_metric([model], 0.0 if state == "closed" else 1.0)
        yield family

    def _states(self) -> dict[str, str]:
        for _ in range(3):  # the engine thread may add a breaker while we read
            try:
                return dict(self.source())
            except RuntimeError:
                continue
        return {}

    def describe(self) -> list[Any]:
        return []  # collected lazily: nothing to check at registration


class Metrics:
    """The session's metric families and the optional HTTP endpoint serving them."""

    def __init__(self, settings: MetricsSettings):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.settings = settings
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "mirai_requests_total", "Calls by outcome", ["model", "status"], registry=r
        )
        self.tokens = Counter(
            "mirai_tokens_total", "Tokens reported by the API", ["model", "direction"], registry=r
        )
        self.retries = Counter(
            "mirai_retries_total",
            "Failed attempts that were retryable",
            ["model", "reason"],
            registry=r,
        )
        self.latency = Histogram(
            "mirai_latency_seconds",
            "Call latency, retries and waits included",
            ["model"],
            buckets=list(settings.latency_buckets_s),
            registry=r,
        )
        self.degradations = Counter(
            "mirai_degradations_total", "Calls sent under a degradation rule", ["rule"], registry=r
        )
        self.quota_rejections = Counter(
            "mirai_quota_rejections_total", "Calls refused by a quota", ["kind"], registry=r
        )
        self.breakers = _BreakerCollector()
        r.register(self.breakers)
        self._counters: dict[str, Any] = {}
        for name, doc in MEMORY_COUNTERS.items():
            self.counter(name, doc)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def counter(self, name: str, documentation: str = "", labels: tuple[str, ...] = ()) -> Any:
        """The counter called ``name`` (``_total`` optional), created on first use."""
        from prometheus_client import Counter

        key = name.removesuffix("_total")
        if key not in self._counters:
            self._counters[key] = Counter(
                key, documentation or key, list(labels), registry=self.registry
            )
        return self._counters[key]

    def text(self) -> str:
        """The exposition text, as `/metrics` serves it."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()

    # --- endpoint -------------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        """The port `/metrics` is served on, or None when not serving."""
        return None if self._server is None else int(self._server.server_port)

    def serve(self, port: int) -> int:
        """Serve `/metrics` on 127.0.0.1:``port`` (0 picks a free port); idempotent."""
        from prometheus_client import start_http_server

        with self._lock:
            if self._server is not None and port in (0, self.port):
                return int(self._server.server_port)
            # bind the new port first: if it is busy, the running endpoint stays up
            server, thread = start_http_server(port, addr=LOOPBACK, registry=self.registry)
            self._stop_locked()
            self._server, self._thread = server, thread
            return int(self._server.server_port)

    def stop(self) -> bool:
        """Stop the endpoint; False when it was not running."""
        with self._lock:
            return self._stop_locked()

    def _stop_locked(self) -> bool:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return False
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(5)
        return True
