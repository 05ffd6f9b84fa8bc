"""Request statistics of the offline server (API paths only), safe to read from any thread."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque

RECENT_LIMIT = 500
ARRIVALS_LIMIT = 10_000
KEY_HEADERS = ("authorization", "api-key")  # never kept: ``auth`` says which one came


class StatsSnapshot(dict):
    """A plain dict of statistics that also allows attribute access (``snap.requests``)."""

    def __getattr__(self, name: str) -> object:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


class Stats:
    """Counters updated by the server loop; :meth:`snapshot` copies them under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Zero all counters; requests still in flight stay counted as in flight."""
        with self._lock:
            self.requests = 0
            self.by_path: Counter[str] = Counter()
            self.by_status: Counter[str] = Counter()
            self.by_model: Counter[str] = Counter()
            self.in_flight: int = getattr(self, "in_flight", 0)
            self.in_flight_by_kind: Counter[str] = getattr(self, "in_flight_by_kind", Counter())
            self.max_in_flight = self.in_flight
            self.max_in_flight_by_kind = {k: v for k, v in self.in_flight_by_kind.items() if v}
            self.embedding_inputs = 0
            self.stream_requests = 0
            self.recent: deque[dict] = deque(maxlen=RECENT_LIMIT)
            self.arrivals: deque[float] = deque(maxlen=ARRIVALS_LIMIT)  # time.time() per request

    def begin(
        self,
        path: str,
        kind: str,
        body: object,
        *,
        query: str = "",
        headers: dict[str, str] | None = None,
    ) -> dict:
        """Count a request whose body has been read; returns its ``recent`` record (its
        headers without the key ones; ``auth``: ``bearer``, ``api-key`` or None)."""
        model = body.get("model") if isinstance(body, dict) else None
        model = model if isinstance(model, str) else None
        headers = headers or {}
        record = {
            "path": path,
            "query": query,
            "model": model,
            "status": None,
            "body": body,
            "headers": {k: v for k, v in headers.items() if k not in KEY_HEADERS},
            "auth": _auth_kind(headers),
        }
        with self._lock:
            self.requests += 1
            self.arrivals.append(time.time())
            self.by_path[path] += 1
            if model is not None:
                self.by_model[model] += 1
            if isinstance(body, dict) and body.get("stream") is True:
                self.stream_requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.in_flight_by_kind[kind] += 1
            peak = max(self.max_in_flight_by_kind.get(kind, 0), self.in_flight_by_kind[kind])
            self.max_in_flight_by_kind[kind] = peak
            self.recent.append(record)
        return record

    def end(self, record: dict, kind: str, status: int | str) -> None:
        """The last byte of the request's answer was written (or it was dropped/hung)."""
        with self._lock:
            self.in_flight -= 1
            self.in_flight_by_kind[kind] -= 1
            self.by_status[str(status)] += 1
            record["status"] = status

    def add_embedding_inputs(self, n: int) -> None:
        with self._lock:
            self.embedding_inputs += n

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return StatsSnapshot(
                requests=self.requests,
                by_path=dict(self.by_path),
                by_status=dict(self.by_status),
                by_model=dict(self.by_model),
                in_flight=self.in_flight,
                max_in_flight=self.max_in_flight,
                max_in_flight_by_kind=dict(self.max_in_flight_by_kind),
                embedding_inputs=self.embedding_inputs,
                stream_requests=self.stream_requests,
                recent=[dict(r) for r in self.recent],
                arrivals=list(self.arrivals),
            )


def _auth_kind(headers: dict[str, str]) -> str | None:
    if headers.get("api-key"):
        return "api-key"
    return "bearer" if headers.get("authorization", "").lower().startswith("bearer ") else None
