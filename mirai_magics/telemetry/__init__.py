"""Telemetry of one session: Prometheus metrics, JSON call logs and tracing, fed by observers.

`Telemetry` is a ResilientClient observer: each attempt counts retries and becomes a span
event; each call counts requests, tokens, latency, degradations and quota rejections, and
writes the log line. Heavy imports (prometheus_client) happen when a Telemetry is created.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..client.observers import Messages, Observer
from ..client.records import Attempt, CallRecord
from .tracing import span_attempt, span_outcome

if TYPE_CHECKING:
    from ..config import Config


class Telemetry(Observer):
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

    def on_attempt(self, record: CallRecord, attempt: Attempt) -> None:
        """Retries are counted as they happen (a scrape mid-call sees them)."""
        span_attempt(record, attempt)
        self._count_retries(record)

    def on_call(self, record: CallRecord, messages: Messages | None, text: str | None) -> None:
        """Counters, the latency histogram and one log line per finished call."""
        span_outcome(record)
        self._count_retries(record)
        self._retries_seen.pop(record.id, None)
        self._count_call(record)
        self.logs.log_call(record, messages, text)

    def _count_retries(self, record: CallRecord) -> None:
        seen = self._retries_seen.get(record.id, 0)
        for reason in record.retry_reasons[seen:]:
            self.metrics.retries.labels(_model(record), reason).inc()
        self._retries_seen[record.id] = len(record.retry_reasons)

    def _count_call(self, record: CallRecord) -> None:
        m, model = self.metrics, _model(record)
        if record.quota:
            m.quota_rejections.labels(record.quota).inc()
        for rule in dict.fromkeys(d.rule for d in record.degradations):
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


def _model(record: CallRecord) -> str:
    return record.model or "unknown"
