"""What one request holds while it is sent: a concurrency slot, a rate slot, its token estimate.

``async with policy.admit(kind, record, background)`` takes them in that order (the budget
last, so a call queued for a slot or a rate token holds no tokens it has not used yet; in
Redis mode a slot the reservation's round trip made late is booked again, holding the tokens
for that one wait) and settles the estimate with the API's ``usage`` on exit: one fallback
hop's, its streams cut before their usage included (``CallRecord.cuts``).

With ``limits.backend: local`` the rate is the policy's token bucket and the budgets its
rolling minutes, per process; retries are paced by backoff and take no token. With
``limits.backend: redis`` both live in Redis (``SharedLimits``) and *every* HTTP attempt takes
a slot of the shared schedule (``again()`` before each retry), so all kernels and
workers together never send more than ``limits.rps.chat`` in any second. Redis unreachable:
one ``RedisUnavailableError`` line, or with ``limits.on_redis_down: local`` the local limits
and a ``redis_down`` degradation on the badge.

Background work (batch items, background cells, memory indexing) waits for budget instead
of failing for it and never takes a rate slot ahead of an interactive call of its process.

Money comes last: with the tokens reserved, ``policy.spend`` holds the call's worst-case cost
against ``limits.budget_usd`` (a refusal gives the tokens back, and locally the rate token;
a Redis rate slot stays used) and settles it with the real cost on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from ..errors import QuotaExceededError, RedisUnavailableError
from .limits import Reservation
from .records import CallRecord
from .spend import Hold

if TYPE_CHECKING:
    from .shared_limits import SharedLimits

YIELD_S = 0.02  # background: how often to look again while a cell waits for a rate slot
BUDGET_POLL_S = (0.05, 2.0)  # background waiting for budget: asks again within these bounds
REBOOKS = 5  # bookings of one send at most while each comes up overslept; the last is used


class SharedReservation:
    """Tokens held in the Redis budgets of one user (and the global one)."""

    __slots__ = ("id", "shared", "user")

    def __init__(self, shared: SharedLimits, id: str, user: str):
        self.shared, self.id, self.user = shared, id, user

    async def settle(self, actual: int) -> None:
        """What the API reported replaces the estimate; Redis down: the lease runs out."""
        with contextlib.suppress(RedisUnavailableError):
            await self.shared.settle(self.id, self.user, actual)


class Admission:
    """``async with policy.admit(...)``: slot → rate → budget; settled on exit.

    ``policy`` is the ``Policy`` that made it (untyped here: policy.py imports this module).
    """

    __slots__ = (
        *("background", "cuts_from", "hold", "kind", "policy", "record", "reservation"),
        "slots",
    )

    def __init__(self, policy: Any, kind: str, record: CallRecord, background: bool):
        self.policy, self.kind, self.record = policy, kind, record
        self.background = background
        self.cuts_from = len(record.cuts)  # the streams this hop cuts are its own to settle
        self.slots = policy.slots.hold(kind, background)
        self.reservation: Reservation | SharedReservation | None = None
        self.hold: Hold | None = None

    async def __aenter__(self) -> Admission:
        policy, record = self.policy, self.record
        try:
            policy._check_request(self.kind, record)
        except QuotaExceededError as exc:
            raise policy._rejected(record, exc) from None
        await self.slots.__aenter__()
        try:
            while self.reservation is None:
                shared = policy.shared_for(record)
                if shared is None:
                    await self._local()
                    continue
                try:
                    await self._shared(shared)
                except RedisUnavailableError as exc:
                    policy.redis_down(exc, record)  # raises unless on_redis_down: local
            await self._hold_money()
        except BaseException:
            await self.slots.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        record = self.record
        cuts = record.cuts[self.cuts_from :]
        try:  # money first: it is local and cannot fail; a Redis settle may be cancelled
            failed = exc[0] is not None
            self.policy.spend.settle(self.hold, record, failed, self.cuts_from)
            used = (record.tokens_in or 0) + (record.tokens_out or 0)
            await self._settle_tokens(used + sum(c.tokens_in + c.tokens_out for c in cuts))
        finally:
            await self.slots.__aexit__(None, None, None)

    async def _settle_tokens(self, used: int) -> None:
        held = self.reservation
        if isinstance(held, SharedReservation):
            await held.settle(used)
        elif held is not None:
            held.settle(used)

    async def _hold_money(self) -> None:
        """Hold the call's worst-case cost, or refuse it with its tokens given back."""
        try:
            self.hold = self.policy.spend.hold(self.record)
        except QuotaExceededError as exc:
            await self._settle_tokens(0)
            if not isinstance(self.reservation, SharedReservation):
                self.policy.buckets[self.kind].refund()  # nothing was sent on it
            raise self.policy._rejected(self.record, exc) from None

    async def again(self) -> None:
        """Before a retry: in Redis mode the attempt takes a slot of the shared window too."""
        shared = self.policy.shared_for(self.record)
        if shared is None:
            return
        try:
            await self._rate_slot(shared, retry=True)
        except RedisUnavailableError as exc:
            self.policy.redis_down(exc, self.record)

    # --- local -----------------------------------------------------------------------

    async def _local(self) -> None:
        policy, record = self.policy, self.record
        if self.background:
            await policy._budget_frees(record)
        await policy._rate_token(self.kind, record, self.background)
        self.reservation = policy._reserve(self.kind, record, self.background)

    # --- shared (Redis) --------------------------------------------------------------

    async def _shared(self, shared: SharedLimits) -> None:
        member, due = await self._rate_slot(shared)
        user = self.policy.budget_user(self.record)
        try:
            held = await shared.reserve(user, self.record.tokens_estimated)
        except QuotaExceededError as exc:
            with contextlib.suppress(RedisUnavailableError):  # nothing was sent on it
                await shared.refund(self.kind, member)
            if not (self.background and exc.retry_in_s is not None):
                raise self.policy._rejected(self.record, exc) from None
            await self.policy.sleep(min(max(exc.retry_in_s, BUDGET_POLL_S[0]), BUDGET_POLL_S[1]))
            return
        self.reservation = reservation = SharedReservation(shared, held, user)
        if self.policy.clock() - due > shared.guard_s / 2:  # the reservation's round trip was
            try:  # slow (a loaded machine): sent now, the slot would crowd the next second
                with contextlib.suppress(RedisUnavailableError):
                    await shared.refund(self.kind, member)
                await self._rate_slot(shared, retry=True)  # it had its slot: not refused now
            except BaseException:
                self.reservation = None
                await reservation.settle(0)
                raise

    async def _rate_slot(self, shared: SharedLimits, retry: bool = False) -> tuple[str, float]:
        """Schedule a send in the shared window and sleep until it: (slot id, its due time).

        A slot overslept by more than half the schedule's guard (a busy event loop) is given
        back and another booked: sending late would crowd the next second past the limit.
        """
        member, due = await self._book_and_wait(shared, retry)
        for _ in range(REBOOKS - 1):  # the last one booked is used as it is
            if self.policy.clock() - due <= shared.guard_s / 2:  # the other half: to the wire
                break
            with contextlib.suppress(RedisUnavailableError):
                await shared.refund(self.kind, member)
            member, due = await self._book_and_wait(shared, retry)
        return member, due

    async def _book_and_wait(self, shared: SharedLimits, retry: bool) -> tuple[str, float]:
        """Book a slot, sleep until it: (slot id, when it was due on ``policy.clock``)."""
        policy = self.policy
        if self.background:
            wait, member = await self._background_slot(shared)
        else:
            cap = None if retry else policy.config.limits.max_wait_s
            try:
                wait, member = await shared.rate(self.kind, cap)
            except QuotaExceededError as exc:
                raise policy._rejected(self.record, exc) from None
        due = policy.clock() + wait
        if wait > 0:
            bucket = policy.buckets[self.kind]
            bucket.waiting += not self.background  # background work of this process yields
            try:
                await policy.sleep(wait)
            except asyncio.CancelledError:
                with contextlib.suppress(RedisUnavailableError):
                    await shared.refund(self.kind, member)
                raise
            finally:
                bucket.waiting -= not self.background
        return member, due

    async def _background_slot(self, shared: SharedLimits) -> tuple[float, str]:
        """A slot in turn (first booked, first sent: no item starves), asked for only while
        no cell of this process waits for one. A cell arriving later waits at most for the
        background sends already booked: one per running item of every process."""
        bucket = self.policy.buckets[self.kind]
        while bucket.waiting:
            await self.policy.sleep(YIELD_S)
        return await shared.rate(self.kind, None)
