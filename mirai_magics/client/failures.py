"""Failures as the user sees them: SDK errors → one-line MiraiErrors, and when to fall back."""

from __future__ import annotations

from ..errors import CircuitOpenError, ClientRequestError, MiraiError, RetriesExhaustedError
from ..redact import redact
from ..text import clip
from .records import CallRecord
from .retry import Outcome


def fallback_reason(exc: MiraiError) -> str | None:
    """Why a failed profile may hand over to the next one in the chain, or None.

    Rate limits, an open breaker and server errors are per model, so another model can
    help; timeouts and connection errors usually hit the whole endpoint, so they end the call.
    """
    if isinstance(exc, CircuitOpenError):
        return "circuit_open"
    if isinstance(exc, RetriesExhaustedError) and exc.last_reason == "429":
        return "429"
    if isinstance(exc, RetriesExhaustedError) and exc.status is not None and exc.status >= 500:
        return "5xx"
    return None


def as_mirai_error(outcome: Outcome, exc: Exception, record: CallRecord) -> MiraiError:
    """The last SDK error (``outcome`` is its classification), as a one-line MiraiError."""
    if outcome.retryable:
        what = _describe(outcome.reason)
        return RetriesExhaustedError(
            f"{record.model}: {what} after {record.attempts} attempt(s)",
            attempts=record.attempts,
            last_reason=outcome.reason,
            status=outcome.status,
        )
    return ClientRequestError(
        f"{record.model}: HTTP {outcome.status or '?'} {_api_message(exc)}".strip(),
        status=outcome.status,
    )


def _describe(reason: str) -> str:
    if reason == "429":
        return "rate limited (HTTP 429)"
    if reason.isdigit():
        return f"server error (HTTP {reason})"
    return {"timeout": "timed out", "connection": "could not connect"}.get(reason, reason)


def _api_message(exc: Exception) -> str:
    """The API's own error message, shortened to one line and free of secrets."""
    body = getattr(exc, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    return redact(clip(message if isinstance(message, str) else str(exc), 200))
