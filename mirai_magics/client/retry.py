"""Retry policy: error classification, Retry-After parsing, and tenacity stop/wait pieces."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tenacity import RetryCallState
from tenacity.stop import stop_base
from tenacity.wait import wait_base, wait_random_exponential

RETRY_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True)
class Outcome:
    """What one failed attempt means for retries, the breaker and the user."""

    reason: str  # "429", "503", "timeout", "connection", "401", …
    retryable: bool
    counts_for_breaker: bool
    status: int | None = None
    retry_after_s: float | None = None


def classify(exc: BaseException, retry_after_cap_s: float = 60.0) -> Outcome:
    """Map an SDK/transport exception to an Outcome (pure: reads only the exception)."""
    import openai

    if isinstance(exc, asyncio.CancelledError):
        return Outcome("cancelled", retryable=False, counts_for_breaker=False)
    if isinstance(exc, openai.APITimeoutError | asyncio.TimeoutError | TimeoutError):
        return Outcome("timeout", retryable=True, counts_for_breaker=True)
    if isinstance(exc, openai.APIConnectionError):
        return Outcome("connection", retryable=True, counts_for_breaker=True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        headers = exc.response.headers
        retryable = status in RETRY_STATUSES or status >= 500
        should = headers.get("x-should-retry")
        if should in ("true", "false"):
            retryable = should == "true"
        return Outcome(
            str(status),
            retryable=retryable,
            counts_for_breaker=status >= 500,
            status=status,
            retry_after_s=retry_after_seconds(headers, retry_after_cap_s),
        )
    return Outcome(type(exc).__name__, retryable=False, counts_for_breaker=False)


def retry_after_seconds(
    headers: Mapping[str, str], cap_s: float, now: Callable[[], float] = time.time
) -> float | None:
    """Seconds asked by ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date), capped."""
    value = headers.get("retry-after-ms")
    if value is not None:
        seconds = _as_float(value, 1000.0)
        if seconds is not None:
            return _clamp(seconds, cap_s)
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _as_float(value, 1.0)
    if seconds is None:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - now()
        except (TypeError, ValueError, IndexError):
            return None
    return _clamp(seconds, cap_s)


def _as_float(value: str, divisor: float) -> float | None:
    try:
        return float(value) / divisor
    except ValueError:
        return None


def _clamp(seconds: float, cap_s: float) -> float:
    return min(max(seconds, 0.0), cap_s)


class wait_retry_after(wait_base):
    """Wait what the server asked for (already capped) when it asked; else the fallback."""

    def __init__(self, fallback: wait_base, outcome_of: Callable[[BaseException], Outcome]):
        self.fallback = fallback
        self.outcome_of = outcome_of

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if exc is not None:
            asked = self.outcome_of(exc).retry_after_s
            if asked is not None:
                return asked
        return self.fallback(retry_state)


class stop_before_deadline(stop_base):
    """Stop when the next sleep would end past ``deadline`` on the injected clock."""

    def __init__(self, deadline: float, clock: Callable[[], float]):
        self.deadline = deadline
        self.clock = clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.clock() + retry_state.upcoming_sleep >= self.deadline


def backoff(base_ms: float, max_ms: float, jitter: bool) -> wait_base:
    """Exponential backoff base → max; with jitter, uniformly below the ceiling (full jitter)."""
    from tenacity.wait import wait_exponential

    cls = wait_random_exponential if jitter else wait_exponential
    return cls(multiplier=base_ms / 1000.0, max=max_ms / 1000.0)
