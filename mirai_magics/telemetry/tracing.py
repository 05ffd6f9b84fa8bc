"""OpenTelemetry spans (mirai.cell → mirai.memory.search → mirai.llm.call → mirai.validate).

Uses only the OpenTelemetry API: without an SDK (or with tracing disabled) every span is a
no-op, decided once per call without importing anything. `configure(tracing_settings)`
adds an OTLP/HTTP exporter to ``{endpoint}/v1/traces`` when `observability.tracing.enabled`
and the SDK and exporter are importable; when they are not, `status_rows` carries the one
notice saying what to install (nothing is logged into a cell).

The spans of one cell are siblings under `mirai.cell`, in that order; `mirai.llm.call`
carries one `attempt` event per HTTP attempt. The engine runs calls on its own thread;
`EngineLoop` copies the caller's context into the task, so the spans still nest.

`mirai.llm.call` carries the OpenTelemetry GenAI semantic-convention attributes
(`gen_ai.operation.name`, `gen_ai.provider.name`, `gen_ai.request.*`, `gen_ai.usage.*`,
`gen_ai.response.*`, `error.type`) next to our `mirai.*` ones. It keeps its name rather
than the convention's ``{operation} {model}``: one span covers the retries and fallback
hops of a call, which may cross models; `gen_ai.request.model` is the last hop's model.

Export failures (no collector at ``localhost:4318``) never print into a cell: the exporter's
own log lines are kept as the last error for `%mirai status`, and a collector that does not
accept connections is skipped instead of retried for seconds (also at interpreter exit).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..text import clip

TRACER_NAME = "mirai_magics"
INSTALL_HINT = "pip install 'mirai_magics[tracing]'"
EXPORTER_LOGGER = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
PROVIDER = "openai"
F = TypeVar("F", bound=Callable[..., Any])
_exports: dict[str, _Export] = {}  # OTLP traces URL → its exporter, wired into the provider
_problems: dict[str, str] = {}  # OTLP traces URL → why configure() could not export to it
_quiet = threading.local()  # the _Export whose export() runs on this thread

GENAI_REQUEST = {  # request parameter → GenAI attribute
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
    "dimensions": "gen_ai.embeddings.dimension.count",
}


class _NoSpan:
    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def add_event(self, name: str, attributes: dict[str, Any] | None = None) -> None:
        pass

    def record_exception(self, exc: BaseException) -> None:
        pass


@functools.cache
def _trace_api() -> Any:
    """``opentelemetry.trace``, or None when the API is not installed (looked up once)."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace


def _tracer() -> Any:
    """Our tracer, or None when spans could not be recorded (no API, or no SDK provider)."""
    trace = _trace_api()
    if trace is None or isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None  # nothing configured: skip span bookkeeping on the hot path
    return trace.get_tracer(TRACER_NAME)


def _plain(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    """Attributes OpenTelemetry accepts: plain values and tuples of them; None is dropped."""
    out = {}
    for key, value in attributes.items():
        if isinstance(value, list | tuple) and value and all(_plain(v) for v in value):
            out[key] = tuple(value)
        elif _plain(value):
            out[key] = value
    return out


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A span named ``name`` (a no-op object when OpenTelemetry is not installed)."""
    tracer = _tracer()
    if tracer is None:
        yield _NoSpan()
        return
    with tracer.start_as_current_span(name, attributes=_clean(attributes)) as current:
        yield current


def set_attributes(current: Any, **attributes: Any) -> None:
    """Set the plain-valued ``attributes`` on ``current`` (None values are skipped)."""
    for key, value in _clean(attributes).items():
        current.set_attribute(key, value)


# --- export ------------------------------------------------------------------------------------


def otlp_traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector: ``http://localhost:4318`` → ``…/v1/traces``."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


def configure(settings: Any) -> bool:
    """Export spans via OTLP/HTTP when ``settings.enabled``; True when exporting.

    Reuses an SDK tracer provider already installed (e.g. by the notebook); installs one
    otherwise. Without the SDK or the OTLP exporter it returns False and `status_rows` says
    what to install.
    """
    if not settings.enabled:
        return False
    url = otlp_traces_url(settings.endpoint)
    if url in _exports:
        return True
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        _problems[url] = f"the OpenTelemetry SDK/OTLP exporter is not installed: {INSTALL_HINT}"
        return False
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        resource = Resource.create({"service.name": settings.service_name})
        trace.set_tracer_provider(TracerProvider(resource=resource))
        provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        _problems[url] = f"the tracer provider is a {type(provider).__name__}, not the SDK's"
        return False
    if not _exports:
        logging.getLogger(EXPORTER_LOGGER).addFilter(_keep_quiet)
        atexit.register(_closing)  # runs before the provider's own shutdown (LIFO)
    _problems.pop(url, None)
    _exports[url] = _Export(url, OTLPSpanExporter(url))
    provider.add_span_processor(BatchSpanProcessor(_exports[url]))
    return True


def status_rows(settings: Any) -> list[tuple[str, str]]:
    """`%mirai status` rows: where spans go and the last export error, or why they cannot."""
    if not settings.enabled:
        return [("tracing", "off (observability.tracing.enabled)")]
    url = otlp_traces_url(settings.endpoint)
    if url not in _exports:
        why = _problems.get(url, "not configured")
        return [("notice", f"observability.tracing is enabled but {why}")]
    return [("tracing", _exports[url].summary())]


class _Export:
    """The OTLP exporter, quiet: failures are kept for `%mirai status`, never printed.

    A SpanExporter by duck typing (the batch processor calls export, force_flush, shutdown),
    so this module imports no SDK class until tracing is configured.
    """

    def __init__(self, url: str, exporter: Any):
        self.url, self.exporter = url, exporter
        self.exported = 0
        self.ok = False  # the last export reached the collector
        self.closing = self.shut = False
        self.last_error: str | None = None

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        if self.shut:
            return SpanExportResult.FAILURE
        if (self.closing or not self.ok) and not _accepts_connections(self.url):
            self.ok, self.last_error = False, "collector not reachable"
            return SpanExportResult.FAILURE
        _quiet.export = self
        try:
            result = self.exporter.export(spans)
        finally:
            _quiet.export = None
        self.ok = result is SpanExportResult.SUCCESS
        if self.ok:
            self.exported, self.last_error = self.exported + len(spans), None
        return result

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.exporter.force_flush(timeout_millis)

    def shutdown(self) -> None:
        if not self.shut:
            self.shut = True
            self.exporter.shutdown()  # also ends a retry loop waiting in the worker thread

    def close(self) -> None:
        """At exit: keep what a reachable collector may still get; give up on one that is not."""
        self.closing = True
        if not _accepts_connections(self.url):
            self.shutdown()

    def summary(self) -> str:
        state = f"last export failed: {self.last_error}" if self.last_error else "exporting"
        return f"OTLP → {self.url} · {state} · {self.exported} spans sent"


def _keep_quiet(record: logging.LogRecord) -> bool:
    """Log filter: a line our exporter logs becomes its last error instead of stderr output."""
    export = getattr(_quiet, "export", None)
    if export is None:
        return True
    export.last_error = clip(record.getMessage(), 200)
    return False


def _accepts_connections(url: str, timeout_s: float = 0.5) -> bool:
    """True when the collector's host accepts a TCP connection (refused fails at once)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "localhost", port), timeout_s):
            return True
    except OSError:
        return False


def _closing() -> None:
    for export in _exports.values():
        export.close()


# --- the call span --------------------------------------------------------------------------


def traced_call(kind: str) -> Callable[[F], F]:
    """Run an async client method inside a `mirai.llm.call` span (no span without a tracer)."""

    def wrap(method: F) -> F:
        @functools.wraps(method)
        async def inner(*args: Any, **kwargs: Any) -> Any:
            if _tracer() is None:
                return await method(*args, **kwargs)
            with span("mirai.llm.call", kind=kind, **{"gen_ai.operation.name": kind}):
                return await method(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap


def span_attempt(record: Any, attempt: Any) -> None:
    """One HTTP attempt as an ``attempt`` event on the current `mirai.llm.call` span."""
    if _tracer() is None:
        return
    attributes = {"n": record.attempts, "model": record.model, "reason": attempt.reason}
    _trace_api().get_current_span().add_event("attempt", _clean({**attributes, "ok": attempt.ok}))


def span_outcome(record: Any) -> None:
    """The call's outcome as attributes of the current `mirai.llm.call` span."""
    if _tracer() is None:
        return
    set_attributes(
        _trace_api().get_current_span(),
        **genai_attributes(record),
        **{
            "mirai.profile": record.profile,
            "mirai.model": record.model,
            "mirai.attempts": record.attempts,
            "mirai.tokens_in": record.tokens_in,
            "mirai.tokens_out": record.tokens_out,
            "mirai.error_code": record.error_code,
            "mirai.degraded": ",".join(d.label for d in record.degradations),
            "mirai.offline": record.offline,
        },
    )


def genai_attributes(record: Any) -> dict[str, Any]:
    """The GenAI semantic-convention attributes of a finished call (pure; None: not known).

    ``gen_ai.response.model`` is the model that answered as we asked for it (the record
    keeps no response model); ``error.type`` is our error code (``client_error``, …).
    """
    out: dict[str, Any] = {
        "gen_ai.operation.name": record.kind,
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.system": PROVIDER,  # the name before semantic conventions 1.37
        "gen_ai.request.model": record.params.get("model") or record.model or None,
        "gen_ai.usage.input_tokens": record.tokens_in,
    }
    if record.kind != "embeddings":
        out["gen_ai.usage.output_tokens"] = record.tokens_out
    for param, attribute in GENAI_REQUEST.items():
        if record.params.get(param) is not None:
            out[attribute] = record.params[param]
    if record.ok:
        out["gen_ai.response.model"] = record.model or None
        out["gen_ai.response.finish_reasons"] = (
            [record.finish_reason] if record.finish_reason else None
        )
    else:
        out["error.type"] = record.error_code or "_OTHER"
    return out
