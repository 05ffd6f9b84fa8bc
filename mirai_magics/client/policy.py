"""The call policy: quotas and degradation rules behind ResilientClient's ``policy`` seam.

Per chat call the client asks ``route`` (a rule such as rate_limit_429 may divert the call
down the fallback chain), then per profile tried ``adjust_params`` (each engaged rule's
effect, e.g. latency_high cuts max_tokens) and ``admit``: the
per-request cap, a concurrency slot, a rate token and the token budgets (global and per
user), in that order; the reservation is settled with the API's ``usage`` afterwards.
The per-user budget belongs to the request's ``user`` parameter when one is given (a
service passing its end users' ids), else to the session user.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from ..config import Config
from ..errors import QuotaExceededError
from ..tokens import context_window
from .degrade import Rule, build_rules
from .limits import ConcurrencyCaps, Reservation, TokenBucket, TokenBudgets
from .observers import Observer
from .records import CallRecord, Degradation


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
        self.clock, self.sleep = clock, sleep
        self.buckets = {
            "chat": TokenBucket("chat", limits.rps.chat, clock),
            "embeddings": TokenBucket("embeddings", limits.rps.embeddings, clock),
        }
        tokens = limits.tokens
        self.budgets = TokenBudgets(tokens.per_minute, tokens.per_user_minute, clock)
        self.slots = ConcurrencyCaps(limits.concurrency)
        self.rules: list[Rule] = build_rules(config.degradation, clock)
        self.rejections: Counter[str] = Counter()

    # --- degradation ----------------------------------------------------------------

    @property
    def observers(self) -> list[Observer]:
        """What the client must tell about attempts and calls: the rules' triggers."""
        return [rule.trigger for rule in self.rules]

    def route(self, name: str, record: CallRecord) -> str:
        """The profile to call: one step down the fallback chain while a rule diverts its
        model (the seed's switch_to_fast: gpt-4o → gpt-4o-mini, not further)."""
        model = self.config.profile(name).model
        diverting = next((r for r in self.rules if r.reroutes(model)), None)
        following = self.config.fallback_for(name)
        if diverting is None or following is None:
            return name
        record.degrade(Degradation(diverting.name, diverting.action.name, name, following))
        return following

    def adjust_params(self, params: dict[str, Any], record: CallRecord) -> dict[str, Any]:
        """The output cap within ``per_request_max``; then each engaged rule's effect, noted on
        the record."""
        cap = self.config.limits.tokens.per_request_max
        for key in ("max_tokens", "max_completion_tokens"):
            if params.get(key) and params[key] > cap:
                params = {**params, key: cap}
        for rule in self.rules:
            params, changed = rule.adjust(params)
            if changed is not None:
                record.degrade(Degradation(rule.name, changed))
        return params

    def history_limit(self, default: int) -> int:
        """Messages of history to send (error_rate_5percent sends fewer)."""
        for rule in self.rules:
            default = rule.history_limit(default)
        return default

    def active(self) -> list[str]:
        """Rules engaged now, e.g. ``["rate_limit_429 (gpt-4o)", "latency_high (p95 …)"]``."""
        return [line for rule in self.rules if (line := rule.status())]

    # --- quotas ---------------------------------------------------------------------

    def admit(self, kind: str, record: CallRecord, background: bool = False) -> Admission:
        """Request cap → concurrency slot → rate token → token budgets; settle afterwards.

        The budget is reserved last, right before sending, so calls queued for a slot or a
        rate token do not hold tokens they have not used yet.
        """
        return Admission(self, kind, record, background)

    def _check_request(self, kind: str, record: CallRecord) -> None:
        """A chat request must fit its model's context window (prompt + output cap)."""
        if kind != "chat":
            return
        window = context_window(record.model, self.config.limits.context_windows)
        if record.tokens_estimated > window:
            exc = QuotaExceededError(
                f"this request needs ~{record.tokens_estimated:,} tokens (prompt + output cap), "
                f"over the {window:,}-token context window of {record.model}; it was not sent",
                kind="request",
            )
            exc.hint = (
                "shorten the prompt, use --no-history or lower --max-tokens "
                "(or set limits.context_windows for this model)"
            )
            raise exc

    async def _rate_token(self, kind: str, record: CallRecord, background: bool) -> None:
        bucket = self.buckets[kind]
        if background:  # never ahead of a cell: only a token free now, with no cell waiting
            while (wait := bucket.take_if_free()) > 0:
                await self.sleep(wait)
            return
        try:
            wait = bucket.take(self.config.limits.max_wait_s)
        except QuotaExceededError as exc:
            raise self._rejected(record, exc) from None
        if wait <= 0:
            return
        bucket.waiting += 1
        try:
            await self.sleep(wait)
        except asyncio.CancelledError:
            bucket.refund()
            raise
        finally:
            bucket.waiting -= 1

    async def _budget_frees(self, record: CallRecord) -> None:
        """Background work waits for token budget instead of failing for it; only a call
        larger than a whole budget fails (naming the setting)."""
        user = _budget_user(record)
        while True:
            try:
                wait = self.budgets.fits_in(user, record.tokens_estimated)
            except QuotaExceededError as exc:
                raise self._rejected(record, exc) from None
            if wait <= 0:
                return
            await self.sleep(min(max(wait, 0.05), 2.0))

    def _reserve(self, kind: str, record: CallRecord, background: bool) -> Reservation | None:
        """Hold the call's tokens; None when background work must wait for budget (another
        call took it since ``_budget_frees``: not a refusal, so not counted as one)."""
        try:
            return self.budgets.reserve(_budget_user(record), record.tokens_estimated)
        except QuotaExceededError as exc:
            self.buckets[kind].refund()  # nothing was sent: the rate token is not used up
            if background and exc.retry_in_s is not None:
                return None
            raise self._rejected(record, exc) from None

    def _rejected(self, record: CallRecord, exc: QuotaExceededError) -> QuotaExceededError:
        self.rejections[exc.kind] += 1
        record.quota = exc.kind
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
        rows.append(("degradations active", ", ".join(self.active()) or "none"))
        rejected = " · ".join(f"{k} {n}" for k, n in sorted(self.rejections.items()))
        rows.append(("quota rejections", rejected or "0"))
        return rows


def _budget_user(record: CallRecord) -> str:
    return record.params.get("user") or record.user or "unknown"


class Admission:
    """``async with policy.admit(...)``: what one request holds while it is sent.

    Background work (batch items, background cells, memory indexing) waits for budget and
    for a rate token that no interactive call is waiting for, so a cell is served first.
    """

    __slots__ = ("background", "kind", "policy", "record", "reservation", "slots")

    def __init__(self, policy: Policy, kind: str, record: CallRecord, background: bool):
        self.policy, self.kind, self.record = policy, kind, record
        self.background = background
        self.slots = policy.slots.hold(kind, background)
        self.reservation: Reservation | None = None

    async def __aenter__(self) -> None:
        policy, record = self.policy, self.record
        try:
            policy._check_request(self.kind, record)
        except QuotaExceededError as exc:
            raise policy._rejected(record, exc) from None
        await self.slots.__aenter__()
        try:
            while self.reservation is None:
                if self.background:
                    await policy._budget_frees(record)
                await policy._rate_token(self.kind, record, self.background)
                self.reservation = policy._reserve(self.kind, record, self.background)
        except BaseException:
            await self.slots.__aexit__(None, None, None)
            raise

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.reservation is not None:
                record = self.record
                self.reservation.settle((record.tokens_in or 0) + (record.tokens_out or 0))
        finally:
            await self.slots.__aexit__(None, None, None)


def quota_settings(config: Config | None) -> tuple[Any, Any]:
    """What a Policy is built from: a reload that changes neither keeps the Policy's state."""
    return (config.limits, config.degradation) if config is not None else (None, None)
