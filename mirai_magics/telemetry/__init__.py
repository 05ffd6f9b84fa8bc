"""Telemetry of one session: Prometheus metrics, JSON call logs and tracing, fed by observers.

`Telemetry.observe` is a ResilientClient observer: "attempt" events count retries, "call"
events count requests, tokens, latency, degradations and quota rejections and write the
log line. Heavy imports (prometheus_client) happen when a Telemetry is created.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Config


class Telemetry:
    """Metrics registry + call logger + tracing setup for one Session."""

    def __init__(self, config: Config):
        from .logs import CallLogger
        from .metrics import Metrics

        self.metrics = Metrics(config.observability.metrics)
        self.logs = CallLogger()
        self._retries_seen: dict[str, int] = {}
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Apply (re-read) logging and tracing settings; the registry stays as it is."""
        from .tracing import configure

        settings = config.observability.logging
        self.logs.include_prompts = settings.include_prompts
        self.logs.secret_names = tuple(config.security.redact_env_names)
        self.logs.logger.setLevel(settings.level)
        configure(config.observability.tracing)

    def watch_breakers(self, source: Callable[[], dict[str, str]]) -> None:
        """Where `mirai_circuit_breaker_open{model}` reads breaker states at scrape time."""
        self.metrics.breakers.source = source

    def counter(self, name: str, documentation: str = "", labels: tuple[str, ...] = ()) -> Any:
        """A counter in this session's registry (e.g. ``mirai_memory_indexed_total``)."""
        return self.metrics.counter(name, documentation, labels)

    # --- observer ---------------------------------------------------------------------

    def observe(self, event: str, record: Any, info: dict[str, Any]) -> None:
        """Client observer: retries per attempt; counters, histogram and a log line per call."""
        if event == "attempt":
            self._count_retries(record)
        elif event == "call":
            self._count_retries(record)
            self._retries_seen.pop(record.id, None)
            self._count_call(record)
            self.logs.log_call(record, info)

    def _count_retries(self, record: Any) -> None:
        seen = self._retries_seen.get(record.id, 0)
        for reason in record.retry_reasons[seen:]:
            self.metrics.retries.labels(_model(record), reason).inc()
        self._retries_seen[record.id] = len(record.retry_reasons)

    def _count_call(self, record: Any) -> None:
        m, model = self.metrics, _model(record)
        quota = record.extra.get("quota")
        if quota:
            m.quota_rejections.labels(quota).inc()
        for rule in record.degradations:
            m.degradations.labels(rule).inc()
        if record.replayed:
            m.requests.labels(model, "replayed").inc()
            return
        m.requests.labels(model, "ok" if record.ok else (record.error_code or "error")).inc()
        m.latency.labels(model).observe(record.latency_ms / 1000)
        if record.tokens_in is not None:
            m.tokens.labels(model, "in").inc(record.tokens_in)
        if record.tokens_out is not None:
            m.tokens.labels(model, "out").inc(record.tokens_out)

    # --- endpoint and lifecycle ----------------------------------------------------------

    def serve(self, port: int) -> int:
        """Serve `/metrics` on 127.0.0.1 (idempotent); returns the port."""
        return self.metrics.serve(port)

    def stop(self) -> bool:
        return self.metrics.stop()

    def close(self) -> None:
        self.metrics.stop()


def _model(record: Any) -> str:
    return record.model or "unknown"
