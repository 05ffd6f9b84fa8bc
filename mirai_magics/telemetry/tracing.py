"""OpenTelemetry spans (mirai.cell → mirai.memory.search → mirai.llm.call → mirai.validate).

Uses only the OpenTelemetry API: without an SDK (or with tracing disabled) every span is a
no-op. `configure(tracing_settings)` installs an SDK tracer provider with an OTLP exporter
when `observability.tracing.enabled` is true and the SDK is importable.

The spans of one cell are siblings under `mirai.cell`, in that order; `mirai.llm.call`
carries one `attempt` event per HTTP attempt. The engine runs calls on its own thread;
`EngineLoop` copies the caller's context into the task, so the spans still nest.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

TRACER_NAME = "mirai_magics"
_exporting: set[str] = set()  # OTLP endpoints already wired into the tracer provider
log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


class _NoSpan:
    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def add_event(self, name: str, attributes: dict[str, Any] | None = None) -> None:
        pass

    def record_exception(self, exc: BaseException) -> None:
        pass


def _tracer() -> Any:
    """Our tracer, or None when spans could not be recorded (no API, or no SDK provider)."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None  # nothing configured: skip span bookkeeping on the hot path
    return trace.get_tracer(TRACER_NAME)


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if isinstance(v, str | int | float | bool)}


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


def configure(settings: Any) -> bool:
    """Export spans via OTLP/HTTP when ``settings.enabled``; True when exporting.

    Reuses an SDK tracer provider already installed (e.g. by the notebook); installs one
    otherwise. Without the SDK or the OTLP exporter, logs how to install them and returns False.
    """
    if not settings.enabled:
        return False
    if settings.otlp_endpoint in _exporting:
        return True
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "tracing is enabled but the OpenTelemetry SDK/OTLP exporter is missing: "
            "pip install 'mirai_magics[tracing]'"
        )
        return False
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        resource = Resource.create({"service.name": settings.service_name})
        provider = TracerProvider(resource=resource)
        trace.set_tracer_provider(provider)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(settings.otlp_endpoint)))
    _exporting.add(settings.otlp_endpoint)
    return True


def traced_call(kind: str) -> Callable[[F], F]:
    """Run an async client method inside a `mirai.llm.call` span."""

    def wrap(method: F) -> F:
        @functools.wraps(method)
        async def inner(*args: Any, **kwargs: Any) -> Any:
            with span("mirai.llm.call", kind=kind):
                return await method(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap


def span_attempt(record: Any, attempt: Any) -> None:
    """One HTTP attempt as an ``attempt`` event on the current `mirai.llm.call` span."""
    if _tracer() is None:
        return
    from opentelemetry import trace

    attributes = {"n": record.attempts, "model": record.model, "reason": attempt.reason}
    trace.get_current_span().add_event("attempt", _clean({**attributes, "ok": attempt.ok}))


def span_outcome(record: Any) -> None:
    """The call's outcome as attributes of the current `mirai.llm.call` span."""
    if _tracer() is None:
        return
    from opentelemetry import trace

    set_attributes(
        trace.get_current_span(),
        **{
            "mirai.profile": record.profile,
            "mirai.model": record.model,
            "mirai.attempts": record.attempts,
            "mirai.tokens_in": record.tokens_in,
            "mirai.tokens_out": record.tokens_out,
            "mirai.error_code": record.error_code,
            "mirai.degraded": ",".join(d.label for d in record.degradations),
        },
    )
