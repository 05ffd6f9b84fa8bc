"""The memory's event counts (entries indexed, cache hits, searches) and where they go.

The memory never imports telemetry: a ``MetricsSink`` (``Telemetry`` or ``Metrics`` fits,
anything whose ``counter(name)`` has ``inc(n)``) is handed in, at construction or later
with ``attach``. Counts made before a sink is attached are handed over when it is, so a
registry created after the memory (the session builds telemetry with its first client)
still shows the real totals.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

# the names telemetry/metrics.py registers (MEMORY_COUNTERS)
INDEXED = "mirai_memory_indexed"
CACHE_HITS = "mirai_memory_cache_hits"
SEARCHES = "mirai_memory_searches"


class MetricsSink(Protocol):
    def counter(self, name: str) -> Any: ...


class Counters:
    """This session's totals; each increment is also added to the attached sink, if any."""

    def __init__(self, sink: MetricsSink | None = None):
        self.totals = dict.fromkeys((INDEXED, CACHE_HITS, SEARCHES), 0)
        self._sink: MetricsSink | None = None
        self._lock = threading.Lock()
        if sink is not None:
            self.attach(sink)

    def add(self, name: str, n: int = 1) -> None:
        """Count ``n`` events called ``name`` (safe from any thread)."""
        if n <= 0:
            return
        with self._lock:
            self.totals[name] += n
            sink = self._sink
        if sink is not None:
            sink.counter(name).inc(n)

    def attach(self, sink: MetricsSink) -> None:
        """Send counts to ``sink`` from now on, starting with the totals so far (idempotent)."""
        with self._lock:
            if sink is self._sink:
                return
            self._sink, totals = sink, dict(self.totals)
        for name, n in totals.items():
            if n:
                sink.counter(name).inc(n)
