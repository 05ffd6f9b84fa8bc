"""Structured logs: one JSON line per call on the `mirai_magics` logger, secrets redacted.

The package adds no handler (a library must not); attach one to see the lines, e.g.
``logging.basicConfig(level="INFO")``. Prompts and answers are left out unless
``observability.logging.include_prompts`` is true.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ..redact import DEFAULT_SECRET_NAMES, redact, secret_env_values

LOGGER_NAME = "mirai_magics"


def call_fields(record: Any, include_prompts: bool, info: dict[str, Any]) -> dict[str, Any]:
    """The log line of one finished call as plain data (pure)."""
    fields: dict[str, Any] = {
        "event": "mirai.call",
        "call_id": record.id,
        "kind": record.kind,
        "model": record.model,
        "profile": record.profile,
        "requested_profile": record.requested_profile,
        "tokens_in": record.tokens_in,
        "tokens_out": record.tokens_out,
        "latency_ms": round(record.latency_ms, 1),
        "attempt": record.attempts,
        "retry_reasons": list(record.retry_reasons),
        "error_code": record.error_code,
        "error": record.error,
        "user_id": record.user,
        "degraded": degraded(record),
        "offline": record.offline,
    }
    if include_prompts:
        fields["prompt"] = info.get("messages")
        fields["response"] = info.get("text")
    return fields


def degraded(record: Any) -> list[str]:
    """Rules applied to the call, plus a fallback along the chain (``fallback:429``)."""
    out = list(record.degradations)
    if record.degraded_from:
        out.append(f"fallback:{record.degraded_reason}")
    return out


class CallLogger:
    """Writes `call_fields` as one redacted JSON line per call."""

    def __init__(self, include_prompts: bool = False, secret_names: tuple[str, ...] = ()):
        self.logger = logging.getLogger(LOGGER_NAME)
        self.include_prompts = include_prompts
        self.secret_names = tuple(secret_names) or DEFAULT_SECRET_NAMES

    def log_call(self, record: Any, info: dict[str, Any]) -> str:
        """Log one call; returns the redacted line, or "" when no handler would emit it."""
        if not (self.logger.isEnabledFor(logging.INFO) and self.logger.hasHandlers()):
            return ""  # nobody listens: skip the JSON and redaction work on the hot path
        fields = call_fields(record, self.include_prompts, info)
        line = json.dumps(fields, ensure_ascii=False, default=str)
        line = redact(line, secret_env_values(self.secret_names))
        self.logger.info(line)  # INFO even for errors: the badge already shows them
        return line
