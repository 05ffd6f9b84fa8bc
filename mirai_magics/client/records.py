"""CallRecord and Reply: what one call did, as plain data every later stage reads."""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

_ids = itertools.count(1)


def new_call_id() -> str:
    """A short id unique within this process (pid + counter)."""
    return f"call-{os.getpid():x}-{next(_ids)}"


@dataclass
class CallRecord:
    """Everything the badge, metrics, logs and the call log need about one call."""

    profile: str
    model: str
    kind: str = "chat"
    requested_profile: str = ""
    id: str = field(default_factory=new_call_id)
    started_at: float = field(default_factory=time.time)
    tokens_in: int | None = None
    tokens_out: int | None = None
    tokens_estimated: int = 0
    latency_ms: float = 0.0
    attempts: int = 0
    retry_reasons: list[str] = field(default_factory=list)
    degraded_from: str | None = None
    degraded_reason: str | None = None
    degradations: list[str] = field(default_factory=list)
    offline: bool = False
    streamed: bool = False
    replayed: bool = False
    finish_reason: str | None = None
    breaker: str = "closed"
    params: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_code: str | None = None
    user: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Reply:
    """A successful answer: the text and the record of how it was obtained."""

    text: str
    record: CallRecord

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        r = self.record
        return f"Reply({len(self.text)} chars, {r.profile}/{r.model}, {r.latency_ms:.0f} ms)"
