"""Quotas: request-rate token buckets, rolling-minute token budgets and concurrency caps.

Time comes from an injected clock, so refill and roll-over are tested on a fake clock.
A budget counts the tokens of calls still in flight (their estimate) plus the tokens the
API reported for calls settled within the last minute.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..config import Concurrency
from ..errors import QuotaExceededError

Clock = Callable[[], float]
WINDOW_S = 60.0
_ids = itertools.count(1)


class TokenBucket:
    """Requests per second with a burst of one second; a caller may wait for its token."""

    def __init__(self, name: str, rate: float, clock: Clock):
        self.name = name
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.clock = clock
        self.tokens = self.capacity
        self.updated = clock()
        self.waiting = 0  # interactive callers sleeping for their token: background yields

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for_next(self) -> float:
        """Seconds until a token would be free (0 when one is free now)."""
        self._refill()
        return max(0.0, (1 - self.tokens) / self.rate)

    def take(self, max_wait_s: float) -> float:
        """Take a token; returns how long to wait before sending, or raises over ``max_wait_s``."""
        wait = self.wait_for_next()
        if wait > max_wait_s:
            raise QuotaExceededError(
                f"{self.name} rate limit of {self.rate:g} requests/s is saturated: the next slot "
                f"frees in {wait:.1f} s (over limits.max_wait_s = {max_wait_s:g})",
                retry_in_s=wait,
                kind="rate",
            )
        self.tokens -= 1  # may go negative: later callers queue behind this one
        return wait

    def take_if_free(self) -> float:
        """Background work: take a token only when one is free now and no interactive caller
        waits for one; else the seconds to wait before asking again (nothing taken)."""
        self._refill()
        if self.waiting == 0 and self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return max((1 - self.tokens) / self.rate, 0.005)

    def refund(self) -> None:
        """Give a token back (its caller was cancelled before sending)."""
        self._refill()
        self.tokens = min(self.capacity, self.tokens + 1)


@dataclass
class Reservation:
    """Tokens held in one or more budgets by a call in flight."""

    amount: int
    budgets: tuple[RollingBudget, ...]
    id: int = 0
    settled: bool = False

    def settle(self, actual: int) -> None:
        """Replace the estimate by what the API reported (0 releases it); idempotent."""
        if self.settled:
            return
        self.settled = True
        for budget in self.budgets:
            budget.settle(self, actual)


class RollingBudget:
    """Tokens per rolling minute: in-flight estimates plus settled usage of the last minute.

    The engine thread changes it; `%mirai status` reads it from the kernel thread: a lock.
    """

    def __init__(
        self, label: str, limit: int, clock: Clock, window_s: float = WINDOW_S, setting: str = ""
    ):
        self.label = label
        self.setting = setting  # the config key of the limit, named when a call can never fit
        self.limit = limit
        self.clock = clock
        self.window_s = window_s
        self.in_flight: dict[int, int] = {}
        self.settled: deque[tuple[float, int]] = deque()
        self._settled_total = 0  # running sum of ``settled``: used() is O(expired), not O(n)
        self._lock = threading.Lock()

    def used(self) -> int:
        with self._lock:
            horizon = self.clock() - self.window_s
            while self.settled and self.settled[0][0] <= horizon:
                self._settled_total -= self.settled.popleft()[1]
            return sum(self.in_flight.values()) + self._settled_total

    def frees_in(self, amount: int) -> float:
        """Seconds until ``amount`` more tokens fit (settled usage rolls out of the window)."""
        excess = self.used() + amount - self.limit
        with self._lock:
            for when, n in self.settled:
                excess -= n
                if excess <= 0:
                    return max(0.0, when + self.window_s - self.clock())
        return self.window_s  # only calls in flight hold it: they settle within a call's time

    def check(self, amount: int) -> None:
        """Raise QuotaExceededError when ``amount`` more tokens do not fit."""
        if amount > self.limit:
            exc = QuotaExceededError(
                f"this call needs ~{amount:,} tokens, more than the whole {self.label} budget "
                f"of {self.limit:,} tokens/min ({self.setting})",
                kind=self.kind,
            )
            exc.hint = f"shorten the prompt, lower --max-tokens or raise {self.setting}"
            raise exc
        used = self.used()
        if used + amount > self.limit:
            wait = self.frees_in(amount)
            raise QuotaExceededError(
                f"{self.label} token budget of {self.limit:,}/min is used up ({used:,} used, "
                f"this call needs ~{amount:,}); it frees up in {wait:.0f} s",
                retry_in_s=wait,
                kind=self.kind,
            )

    @property
    def kind(self) -> str:
        return "tokens_global" if self.label == "global" else "tokens_user"

    def hold(self, reservation: Reservation) -> None:
        with self._lock:
            self.in_flight[reservation.id] = reservation.amount

    def settle(self, reservation: Reservation, actual: int) -> None:
        with self._lock:
            self.in_flight.pop(reservation.id, None)
            if actual > 0:
                self.settled.append((self.clock(), actual))
                self._settled_total += actual


class TokenBudgets:
    """The global budget and one budget per user; a call reserves in both or in neither."""

    def __init__(self, global_per_minute: int, per_user_per_minute: int, clock: Clock):
        self.clock = clock
        self.per_user = per_user_per_minute
        self.global_budget = RollingBudget(
            "global", global_per_minute, clock, setting="limits.tokens.per_minute"
        )
        self.users: dict[str, RollingBudget] = {}

    def user(self, name: str) -> RollingBudget:
        if name not in self.users:
            self.users[name] = RollingBudget(
                f"per-user ({name})",
                self.per_user,
                self.clock,
                setting="limits.tokens.per_user_minute",
            )
        return self.users[name]

    def fits_in(self, user: str, amount: int) -> float:
        """Seconds until ``amount`` fits in both budgets (0: now); raises QuotaExceededError
        only when it never will (more than a whole budget)."""
        wait = 0.0
        for budget in (self.user(user), self.global_budget):
            try:
                budget.check(amount)
            except QuotaExceededError as exc:
                if exc.retry_in_s is None:
                    raise
                wait = max(wait, exc.retry_in_s)
        return wait

    def reserve(self, user: str, amount: int) -> Reservation:
        """Hold ``amount`` tokens for ``user``, or raise QuotaExceededError saying when to retry."""
        budgets = (self.user(user), self.global_budget)
        for budget in budgets:
            budget.check(amount)
        reservation = Reservation(amount, budgets, id=next(_ids))
        for budget in budgets:
            budget.hold(reservation)
        return reservation


class ConcurrencyCaps:
    """In-flight caps per kind (chat, embeddings) and for background work on top of them."""

    def __init__(self, caps: Concurrency):
        self.caps = {
            "chat": caps.chat,
            "embeddings": caps.embeddings,
            "background": caps.background,
        }
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self.in_flight: dict[str, int] = dict.fromkeys(self.caps, 0)

    def _semaphore(self, kind: str) -> asyncio.Semaphore:
        if kind not in self._semaphores:
            self._semaphores[kind] = asyncio.Semaphore(self.caps[kind])
        return self._semaphores[kind]

    def hold(self, kind: str, background: bool) -> Slots:
        """Hold a slot of ``kind`` (and a background slot first, for background work)."""
        return Slots(self, ("background", kind) if background else (kind,))

    async def acquire(self, kind: str) -> None:
        await self._semaphore(kind).acquire()
        self.in_flight[kind] += 1

    def release(self, kind: str) -> None:
        self.in_flight[kind] -= 1
        self._semaphores[kind].release()


class Slots:
    """``async with``: the slots of ``kinds`` in order (background first: no deadlock)."""

    __slots__ = ("caps", "kinds", "taken")

    def __init__(self, caps: ConcurrencyCaps, kinds: tuple[str, ...]):
        self.caps, self.kinds, self.taken = caps, kinds, 0

    async def __aenter__(self) -> None:
        try:
            for kind in self.kinds:
                await self.caps.acquire(kind)
                self.taken += 1
        except BaseException:
            await self.__aexit__(None, None, None)
            raise

    async def __aexit__(self, *exc: object) -> None:
        while self.taken:
            self.taken -= 1
            self.caps.release(self.kinds[self.taken])
