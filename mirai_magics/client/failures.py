"""Failures as the user sees them: SDK errors → one-line MiraiErrors, and when to fall back.

A message says what failed as far as the client can tell, and the hint what to do about it:
a fallback chain names every profile it tried and the causes (``heavy/gpt-4o → main → fast
all failed: HTTP 500 (12 attempts)``); a connection that could not be made names the URL, why
(connection refused, host not found) and the setting the URL comes from (``MIRAI_BASE_URL``);
a stream cut after its first chunk says so instead of "could not connect".
"""

from __future__ import annotations

import os
import socket
import ssl

from ..config import ENV_BASE_URLS
from ..errors import CircuitOpenError, ClientRequestError, MiraiError, RetriesExhaustedError
from ..redact import redact
from ..text import clip
from .records import CallRecord
from .retry import Outcome

_API_PATHS = ("/chat/completions", "/embeddings", "/models")
_HOP_CAUSES = {"429": "HTTP 429", "5xx": "HTTP 5xx", "circuit_open": "breaker open"}


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
    if not outcome.retryable:
        return ClientRequestError(
            f"{record.model}: HTTP {outcome.status or '?'} {_api_message(exc)}".strip(),
            status=outcome.status,
        )
    cause, hint = _cause(outcome, exc, record)
    if record.fallbacks:
        message = f"{chain_label(record)} all failed: {', '.join(_causes(record, outcome, cause))}"
        message += f" ({record.attempts} attempts)"
        hint = f"every profile of degradation.fallback_chain failed; {hint}"
    else:
        message = f"{record.model}: {cause} after {record.attempts} attempt(s)"
    return RetriesExhaustedError(
        message,
        attempts=record.attempts,
        last_reason=outcome.reason,
        status=outcome.status,
        hint=hint,
    )


def chain_label(record: CallRecord) -> str:
    """``heavy/gpt-4o → main → fast``: the profiles a call went down, the first with its model."""
    hops = record.fallbacks
    first = hops[0].from_profile or record.requested_profile
    if hops[0].from_model:
        first = f"{first}/{hops[0].from_model}"
    return " → ".join([first, *(hop.to_profile or "?" for hop in hops)])


def url_setting(endpoint: str | None = None) -> str:
    """Where the endpoint's URL comes from: a named endpoint's config key, else the environment
    variable that set it, or the config."""
    if endpoint:
        return f"endpoints.{endpoint}.base_url in the config"
    named = next((name for name in ENV_BASE_URLS if os.environ.get(name)), None)
    return named or f"endpoint.base_url in the config (or {ENV_BASE_URLS[0]})"


def _causes(record: CallRecord, outcome: Outcome, last: str) -> list[str]:
    """Each hop's cause once, the last one exact (``HTTP 500`` stands for ``HTTP 5xx``)."""
    final = f"HTTP {outcome.reason}" if outcome.reason.isdigit() else last
    causes = [_HOP_CAUSES.get(hop.detail, hop.detail) for hop in record.fallbacks]
    causes = list(dict.fromkeys([*causes, final]))
    if any(c.startswith("HTTP 5") and c != "HTTP 5xx" for c in causes):
        causes = [c for c in causes if c != "HTTP 5xx"]
    return causes


def _cause(outcome: Outcome, exc: Exception, record: CallRecord) -> tuple[str, str]:
    """(what went wrong, what to do) for a retryable failure that used up its attempts."""
    reason = outcome.reason
    if reason == "429":
        return "rate limited (HTTP 429)", "wait a minute (`%mirai status` shows the limits)"
    if reason.isdigit():
        what = "server error" if int(reason) >= 500 else "refused for now"
        return f"{what} (HTTP {reason})", "the server keeps failing; wait a minute"
    if reason == "connection" or _connecting(exc):
        return _connection_cause(exc, record)
    if reason == "timeout":
        setting = getattr(exc, "setting", None)  # our end-to-end bound (deadline.AttemptTimedOut)
        what = str(exc) if setting else "timed out"  # "no complete answer within 2 s (…)"
        fix = f"raise {setting or 'defaults.timeout_s'} or try a faster profile"
        return what, fix
    return reason, "wait a minute, or try another profile"


def _connection_cause(exc: Exception, record: CallRecord) -> tuple[str, str]:
    url, problems = _url(exc), _chain(exc)
    connecting = _connecting(exc)
    reach = f"could not connect to {url} ({_why(problems)})"
    fix = f"is the server running? check {url_setting(record.endpoint)}, then `%mirai reload`"
    if _cut(problems, record):
        cause = "the answer stream was cut mid-answer" + (f", then {reach}" if connecting else "")
        return cause, "the server or a proxy closed the connection; run the cell again"
    if connecting:
        return reach, fix
    return f"{url} closed the connection without an answer", f"wait a minute; {fix}"


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, outermost first (the SDK wraps httpx wraps OSError)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 12:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _connecting(exc: BaseException) -> bool:
    """The failure came while connecting (no byte of the request was sent)."""
    return any(type(e).__name__ in ("ConnectError", "ConnectTimeout") for e in _chain(exc))


def _cut(problems: list[BaseException], record: CallRecord) -> bool:
    """A stream had begun (a chunk arrived) or a body stopped before it was complete."""
    if any("complete message body" in str(e) for e in problems):
        return True
    return record.streamed and record.response_model is not None


def _why(problems: list[BaseException]) -> str:
    """Why a connection could not be made, in words: refused, host not found, TLS, timed out."""
    for problem in problems:
        if isinstance(problem, ConnectionRefusedError):
            return "connection refused"
        if isinstance(problem, socket.gaierror):
            return "host not found"
        if isinstance(problem, ssl.SSLError):
            return f"TLS failed: {clip(str(problem), 80)}"
        if type(problem).__name__ == "ConnectTimeout":
            return "timed out"
    return clip(str(problems[-1]), 80) or type(problems[-1]).__name__


def _url(exc: BaseException) -> str:
    """The base URL the failed request went to (``…/v1``), from the SDK's request."""
    request = getattr(exc, "request", None)
    url = str(getattr(request, "url", "") or "").split("?", 1)[0]
    for path in _API_PATHS:
        if url.endswith(path):
            return url[: -len(path)]
    return url or "the endpoint"


def _api_message(exc: Exception) -> str:
    """The API's own error message, shortened to one line and free of secrets."""
    body = getattr(exc, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    return redact(clip(message if isinstance(message, str) else str(exc), 200))
