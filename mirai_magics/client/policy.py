"""The call policy: quotas and degradation rules behind ResilientClient's ``policy`` seam.

Per chat call the client asks ``route`` (rate_limit_429 may divert to the fallback profile),
then per profile tried ``adjust_params`` (latency_high cuts max_tokens) and ``admit``: the
per-request cap, a concurrency slot, a rate token and the token budgets (global and per
user), in that order; the reservation is settled with the API's ``usage`` afterwards.
The per-user budget belongs to the request's ``user`` parameter when one is given (a
service passing its end users' ids), else to the session user.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ..config import Config
from ..errors import QuotaExceededError
from .degrade import ERROR_RATE, LATENCY, RATE_LIMIT, Degradation
from .limits import ConcurrencyCaps, Reservation, TokenBucket, TokenBudgets


class Policy:
    """Quotas + degradation for one client; all state lives on the engine loop's thread."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        limits = config.limits
        self.config = config
        self.sleep = sleep
        self.buckets = {
            "chat": TokenBucket("chat", limits.requests_per_second.chat, clock),
            "embeddings": TokenBucket("embeddings", limits.requests_per_second.embeddings, clock),
        }
        tokens = limits.tokens
        self.budgets = TokenBudgets(tokens.global_per_minute, tokens.per_user_per_minute, clock)
        self.slots = ConcurrencyCaps(limits.concurrency)
        self.degradation = Degradation(config.degradation.rules, clock)
        self.rejections: Counter[str] = Counter()
        self.observe = self.degradation.observe  # a client observer (attempts and calls)

    # --- degradation ----------------------------------------------------------------

    def route(self, name: str, record: Any) -> str:
        """The profile to call: along the fallback chain while rate_limit_429 diverts a model."""
        target, seen = name, {name}
        while self.degradation.diverted(self.config.profile(target).model):
            following = self.config.fallback_for(target)
            if following is None or following in seen:
                break
            target = following
            seen.add(target)
        if target != name:
            _mark(record, RATE_LIMIT)
        return target

    def adjust_params(self, params: dict[str, Any], record: Any) -> dict[str, Any]:
        """Cut the output cap under latency_high; tag calls sent while errors run high."""
        if self.degradation.latency_high():
            factor = self.config.degradation.rules.latency_high.max_tokens_factor
            for key in ("max_tokens", "max_completion_tokens"):
                if params.get(key):
                    params = {**params, key: max(1, int(params[key] * factor))}
            _mark(record, LATENCY)
        if self.degradation.error_rate_high():
            _mark(record, ERROR_RATE)
        return params

    def history_limit(self, default: int) -> int:
        """Messages of history to send: fewer while error_rate_5percent is engaged."""
        if self.degradation.error_rate_high():
            return min(default, self.config.degradation.rules.error_rate_5percent.history_messages)
        return default

    # --- quotas ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def admit(self, kind: str, record: Any, background: bool = False) -> AsyncIterator[None]:
        """Request cap → concurrency slot → rate token → token budgets; settle afterwards.

        The budget is reserved last, right before sending, so calls queued for a slot or a
        rate token do not hold tokens they have not used yet.
        """
        try:
            self._check_request(kind, record.tokens_estimated)
        except QuotaExceededError as exc:
            raise self._rejected(record, exc) from None
        async with self.slots.hold(kind, background):
            await self._rate_token(kind, record)
            reservation = self._reserve(kind, record)
            try:
                yield
            finally:
                reservation.settle((record.tokens_in or 0) + (record.tokens_out or 0))

    def _check_request(self, kind: str, estimate: int) -> None:
        cap = self.config.limits.tokens.per_request_max
        if kind == "chat" and estimate > cap:
            exc = QuotaExceededError(
                f"this request needs ~{estimate:,} tokens (prompt + output cap), over "
                f"limits.tokens.per_request_max = {cap:,}; it was not sent",
                kind="request",
            )
            exc.hint = "shorten the prompt, use --no-history or lower --max-tokens"
            raise exc

    async def _rate_token(self, kind: str, record: Any) -> None:
        bucket = self.buckets[kind]
        try:
            wait = bucket.take(self.config.limits.max_wait_s)
        except QuotaExceededError as exc:
            raise self._rejected(record, exc) from None
        if wait <= 0:
            return
        try:
            await self.sleep(wait)
        except asyncio.CancelledError:
            bucket.refund()
            raise

    def _reserve(self, kind: str, record: Any) -> Reservation:
        user = record.params.get("user") or record.user or "unknown"
        try:
            return self.budgets.reserve(user, record.tokens_estimated)
        except QuotaExceededError as exc:
            self.buckets[kind].refund()  # nothing was sent: the rate token is not used up
            raise self._rejected(record, exc) from None

    def _rejected(self, record: Any, exc: QuotaExceededError) -> QuotaExceededError:
        self.rejections[exc.kind] += 1
        record.extra["quota"] = exc.kind
        return exc

    # --- status -----------------------------------------------------------------------

    def status_rows(self, user: str | None = None) -> list[tuple[str, str]]:
        """Rows for `%mirai status`: budgets, rates, slots, degradations, rejections."""
        g = self.budgets.global_budget
        rows = [("tokens this minute (global)", f"{g.used():,} / {g.limit:,}")]
        for name, budget in sorted(self.budgets.users.items()):
            if user is None or name == user:
                rows.append(
                    (f"tokens this minute ({name})", f"{budget.used():,} / {budget.limit:,}")
                )
        caps, busy = self.slots.caps, self.slots.in_flight
        rows.append(("in flight", " · ".join(f"{k} {busy[k]}/{caps[k]}" for k in caps)))
        rows.append(("degradations active", ", ".join(self.degradation.active()) or "none"))
        rejected = " · ".join(f"{k} {n}" for k, n in sorted(self.rejections.items()))
        rows.append(("quota rejections", rejected or "0"))
        return rows


def _mark(record: Any, rule: str) -> None:
    if rule not in record.degradations:
        record.degradations.append(rule)
