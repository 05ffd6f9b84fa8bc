"""What a ResilientClient tells its observers: one hook per attempt, one per finished call.

Observers (the quota policy's rules, telemetry, the call log, the session's record list,
tracing) subclass :class:`Observer` and override the hooks they need.
"""

from __future__ import annotations

from typing import Any

from .records import Attempt, CallRecord

Messages = list[dict[str, Any]]


class Observer:
    """Base class: both hooks do nothing."""

    def on_attempt(self, record: CallRecord, attempt: Attempt) -> None:
        """One HTTP attempt ended (``attempt.ok`` or the reason it failed)."""

    def on_call(self, record: CallRecord, messages: Messages | None, text: str | None) -> None:
        """A call ended, answered or failed; ``messages`` is None for embeddings."""


class Collect(Observer):
    """Appends every finished call's record to a list (the load test, the session)."""

    def __init__(self, records: list[CallRecord], keep: int | None = None):
        self.records = records
        self.keep = keep

    def on_call(self, record: CallRecord, messages: Messages | None, text: str | None) -> None:
        self.records.append(record)
        if self.keep is not None and len(self.records) > self.keep:
            del self.records[: -self.keep]
