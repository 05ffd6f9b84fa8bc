"""Prometheus metrics of one session: its own CollectorRegistry and the `/metrics` endpoint.

Never the global registry, so `%reload_ext mirai_magics` cannot register a name twice.
Label values are model names, statuses, reasons, rules, kinds and directions only: never
prompts, keys or other free text. The families (the seed's names):

- ``mirai_openai_requests_total{model,status}``: one per finished call, status in STATUSES
- ``mirai_openai_tokens_total{model,direction}``: tokens the API reported, ``in`` / ``out``
- ``mirai_openai_retries_total{model,reason}``: failed attempts that were retryable
- ``mirai_openai_latency_seconds{model}``: one observation per HTTP attempt (so its
  ``_count`` is the number of attempts); buckets from ``latency_buckets_s``
- ``mirai_openai_circuit_breaker_open{model}``: 1 while the breaker is open or half-open
- ``mirai_openai_degradations_total{rule}``, ``mirai_openai_quota_rejections_total{kind}``
  and the memory's ``mirai_memory_*_total``
- ``mirai_openai_routes_total{profile,reason}``: calls that asked for ``auto``, by the profile
  routing chose and its reason (a closed set: the classifier's reasons, use cases and rules)

The endpoint listens on 127.0.0.1 at ``observability.metrics.port``; ``MIRAI_METRICS_PORT``
overrides it (0 picks a free port), e.g. for tests or a second notebook on the same host.
A port already taken (a second kernel, Prometheus itself on 9090) is one notice that names
the port and the setting it came from (``busy_notice``), never an error.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..client.records import CallRecord
    from ..config import Metrics as MetricsSettings

LOOPBACK = "127.0.0.1"
ENV_PORT = "MIRAI_METRICS_PORT"
PREFIX = "mirai_openai"
# the `status` label of mirai_openai_requests_total: every value it can take
STATUSES = {
    "success": "answered by the API",
    "client_error": "refused by the API (4xx other than 408/409/429): retrying cannot help",
    "failed": "retries exhausted (429, 5xx, timeouts, connection errors) or an internal error",
    "quota_exceeded": "refused by a local quota (rate, tokens, request size) before sending",
    "circuit_open": "refused by an open circuit breaker, with no fallback left",
    "cancelled": "interrupted by the user (Ctrl-C, a cancelled job)",
    "rejected": "refused before sending: bad arguments, config, context too long, replay miss",
    "replayed": "answered from a recorded call log: nothing was sent",
}
ERROR_STATUSES = ("client_error", "failed", "quota_exceeded", "circuit_open")  # error rate
_STATUS_OF_CODE = {
    "client_error": "client_error",
    "quota_exceeded": "quota_exceeded",
    "circuit_open": "circuit_open",
    "cancelled": "cancelled",
    "usage_error": "rejected",
    "config_error": "rejected",
    "context_too_long": "rejected",
    "replay_miss": "rejected",
}
# incremented by the memory (memory/counters.py) once the session hands it its Telemetry
MEMORY_COUNTERS = {
    "mirai_memory_indexed": "Memory entries (cells, learned-file chunks) embedded and stored",
    "mirai_memory_cache_hits": "Memory entries whose embedding was reused from the SHA-256 cache",
    "mirai_memory_searches": "Memory searches run to build a prompt",
}


def call_status(record: CallRecord) -> str:
    """The ``status`` label of a finished call (one of STATUSES)."""
    if record.replayed:
        return "replayed"
    if record.ok:
        return "success"
    return _STATUS_OF_CODE.get(record.error_code or "", "failed")


def configured_port(settings: MetricsSettings) -> int:
    """``$MIRAI_METRICS_PORT`` when set, else ``observability.metrics.port``."""
    raw = os.environ.get(ENV_PORT, "").strip()
    if not raw:
        return settings.port
    if raw.isdigit() and int(raw) <= 65535:
        return int(raw)
    raise ConfigError(
        f"{ENV_PORT}={raw!r} is not a port",
        hint="set it to a number 0–65535 (0 picks a free port) or unset it",
    )


def port_setting() -> str:
    """Where the endpoint's port comes from: ``MIRAI_METRICS_PORT`` when set, else the config."""
    return ENV_PORT if os.environ.get(ENV_PORT, "").strip() else "observability.metrics.port"


def busy_notice(port: int, exc: OSError) -> str:
    """The one line shown when the endpoint cannot listen on ``port``: the port, why, and
    the setting to change (or ``%mirai metrics --port 0`` for any free port)."""
    what = "busy" if exc.errno == errno.EADDRINUSE else "not usable"
    return (
        f"port {port} is {what} ({exc.strerror or exc}): set {port_setting()} "
        "or run %mirai metrics --port 0"
    )


class _BreakerCollector:
    """`mirai_openai_circuit_breaker_open{model}` read from the live breakers at scrape time."""

    def __init__(self) -> None:
        self.source: Callable[[], dict[str, str]] = dict

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            f"{PREFIX}_circuit_breaker_open",
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


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every 15 s must not print into the notebook


class Metrics:
    """The session's metric families and the optional HTTP endpoint serving them."""

    def __init__(self, settings: MetricsSettings):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.settings = settings
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            f"{PREFIX}_requests_total", "Finished calls by outcome", ["model", "status"], registry=r
        )
        self.tokens = Counter(
            f"{PREFIX}_tokens_total", "Tokens the API reported", ["model", "direction"], registry=r
        )
        self.retries = Counter(
            f"{PREFIX}_retries_total",
            "Failed attempts that were retryable (429, 5xx, timeouts, connection errors)",
            ["model", "reason"],
            registry=r,
        )
        self.latency = Histogram(
            f"{PREFIX}_latency_seconds",
            "Latency of one HTTP attempt (each retry is its own observation)",
            ["model"],
            buckets=list(settings.latency_buckets_s),
            registry=r,
        )
        self.degradations = Counter(
            f"{PREFIX}_degradations_total", "Calls sent under a degradation", ["rule"], registry=r
        )
        self.quota_rejections = Counter(
            f"{PREFIX}_quota_rejections_total", "Calls refused by a quota", ["kind"], registry=r
        )
        self.routes = Counter(
            f"{PREFIX}_routes_total",
            "Calls that asked for auto, by the profile routing chose and why",
            ["profile", "reason"],
            registry=r,
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
        """Serve `/metrics` on 127.0.0.1:``port`` (0: any free port); idempotent.

        Raises OSError when the port cannot be bound; a running endpoint then stays up.
        """
        with self._lock:
            if self._server is not None and port in (0, self.port):
                return int(self._server.server_port)
            server = self._bind(port)
            self._stop_locked()
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},  # stop() waits at most this long
                name="mirai-metrics",
                daemon=True,
            )
            self._thread.start()
            return int(server.server_port)

    def _bind(self, port: int) -> Any:
        from wsgiref.simple_server import make_server

        from prometheus_client import make_wsgi_app
        from prometheus_client.exposition import ThreadingWSGIServer

        app = make_wsgi_app(self.registry)
        return make_server(LOOPBACK, port, app, ThreadingWSGIServer, handler_class=_Quiet)

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
