"""Structured logs: one JSON line per call on the `mirai_magics` logger, secrets redacted.

The package adds no handler (a library must not); attach one to see the lines, e.g.
``logging.basicConfig(level="INFO")``. Prompts and answers are left out unless
``observability.logging.include_prompts`` is true.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ..client.records import CallRecord
from ..redact import DEFAULT_SECRET_NAMES, redact, secret_env_values

LOGGER_NAME = "mirai_magics"


def call_fields(
    record: CallRecord,
    include_prompts: bool,
    messages: list[dict[str, Any]] | None = None,
    text: str | None = None,
) -> dict[str, Any]:
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
        "degraded": list(dict.fromkeys(d.label for d in record.degradations)),
        "offline": record.offline,
    }
    if include_prompts:
        fields["prompt"] = messages
        fields["response"] = text
    return fields


class CallLogger:
    """Writes `call_fields` as one redacted JSON line per call."""

    def __init__(self, include_prompts: bool = False, secret_names: tuple[str, ...] = ()):
        self.logger = logging.getLogger(LOGGER_NAME)
        self.include_prompts = include_prompts
        self.secret_names = tuple(secret_names) or DEFAULT_SECRET_NAMES

    def log_call(
        self,
        record: CallRecord,
        messages: list[dict[str, Any]] | None = None,
        text: str | None = None,
    ) -> str:
        """Log one call; returns the redacted line, or "" when no handler would emit it."""
        if not (self.logger.isEnabledFor(logging.INFO) and self.logger.hasHandlers()):
            return ""  # nobody listens: skip the JSON and redaction work on the hot path
        fields = call_fields(record, self.include_prompts, messages, text)
        line = json.dumps(fields, ensure_ascii=False, default=str)
        line = redact(line, secret_env_values(self.secret_names))
        self.logger.info(line)  # INFO even for errors: the badge already shows them
        return line
