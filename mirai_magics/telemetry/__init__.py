"""Telemetry of one session: Prometheus metrics, JSON call logs and tracing, fed by observers.

`Telemetry` is a ResilientClient observer: each attempt counts retries, is observed in the
latency histogram and becomes a span event; each call counts requests, tokens, degradations,
quota rejections and `auto` routes, and writes the log line. With
``observability.metrics.enabled`` the `/metrics` endpoint starts with the Telemetry (no
`%mirai metrics` needed); a port that cannot be bound is one `%mirai status` row (and
one line under the notebook's next mirai cell), never an error. Heavy imports
(prometheus_client) happen when a Telemetry is created.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..client.observers import Messages, Observer
from ..client.records import Attempt, CallRecord
from .tracing import span_attempt, span_outcome

if TYPE_CHECKING:
    from ..config import Config
    from ..config import Metrics as MetricsSettings


class Telemetry(Observer):
    """Metrics registry and endpoint + call logger + tracing setup for one Session."""

    def __init__(self, config: Config):
        from .logs import CallLogger
        from .metrics import Metrics

        self.metrics = Metrics(config.observability.metrics)
        self.logs = CallLogger()
        self.configured_port = 0  # where `%mirai metrics` serves without --port (config, env)
        self.notice: str | None = None  # why the endpoint is not up, for `%mirai status`
        self._endpoint: tuple[bool, int] | None = None  # (enabled, port) last applied
        self._retries_seen: dict[str, int] = {}
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Apply (re-read) logging, tracing and endpoint settings; the registry stays."""
        from ..config import home_dir
        from .logs import FILE_NAME
        from .tracing import configure

        path = home_dir(config) / FILE_NAME
        self.logs.configure(config.observability.logging, path, config.security.redact_env_names)
        self.tracing = config.observability.tracing
        configure(self.tracing)
        self._open_endpoint(config.observability.metrics)

    def _open_endpoint(self, settings: MetricsSettings) -> None:
        """Start (or stop) `/metrics` as configured; unchanged settings keep a manual choice."""
        from .metrics import busy_notice, configured_port

        self.configured_port = configured_port(settings)
        wanted = (settings.enabled, self.configured_port)
        if wanted == self._endpoint:
            return
        self._endpoint = wanted
        if not settings.enabled:
            self.stop()
            return
        try:
            self.serve(self.configured_port)
        except OSError as exc:
            self.notice = busy_notice(self.configured_port, exc)

    def watch_breakers(self, source: Callable[[], dict[str, str]]) -> None:
        """Where `mirai_openai_circuit_breaker_open{model}` reads breaker states at scrape."""
        self.metrics.breakers.source = source

    def counter(self, name: str, documentation: str = "", labels: tuple[str, ...] = ()) -> Any:
        """A counter in this session's registry (e.g. ``mirai_memory_indexed_total``)."""
        return self.metrics.counter(name, documentation, labels)

    # --- observer ---------------------------------------------------------------------

    def on_attempt(self, record: CallRecord, attempt: Attempt) -> None:
        """Retries and attempt latency are counted as they happen (a scrape mid-call sees them)."""
        span_attempt(record, attempt)
        self._count_retries(record)
        if attempt.latency_s is not None:
            self.metrics.latency.labels(_model(record)).observe(attempt.latency_s)

    def on_call(self, record: CallRecord, messages: Messages | None, text: str | None) -> None:
        """Counters and one log line per finished call."""
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
        from .metrics import call_status

        m, model = self.metrics, _model(record)
        if record.quota:
            m.quota_rejections.labels(record.quota).inc()
        for rule in dict.fromkeys(d.rule for d in record.degradations):
            m.degradations.labels(rule).inc()
        if record.route is not None:
            m.routes.labels(record.route.profile, record.route.reason).inc()
        m.requests.labels(model, call_status(record)).inc()
        if record.replayed:
            return  # nothing was sent: no tokens spent
        for direction, tokens in (("in", record.tokens_in), ("out", record.tokens_out)):
            if tokens is not None:
                m.tokens.labels(model, direction).inc(tokens)

    def status_rows(self) -> list[tuple[str, str]]:
        """Rows for `%mirai status`: where metrics, log lines and spans go (or why they do not)."""
        from .tracing import status_rows

        rows = []
        if self.notice is not None:
            rows.append(("metrics", self.notice))
        elif self.metrics.port is not None:
            rows.append(("metrics", f"http://127.0.0.1:{self.metrics.port}/metrics"))
        if self.logs.path is not None:
            rows.append(("log file", str(self.logs.path)))
        return rows + status_rows(self.tracing)

    # --- endpoint and lifecycle ----------------------------------------------------------

    def serve(self, port: int) -> int:
        """Serve `/metrics` on 127.0.0.1 (idempotent; 0 picks a free port); returns the port."""
        bound = self.metrics.serve(port)
        self.notice = None
        return bound

    def stop(self) -> bool:
        return self.metrics.stop()

    def close(self) -> None:
        self.metrics.stop()
        self.logs.close()


def _model(record: CallRecord) -> str:
    return record.model or "unknown"
