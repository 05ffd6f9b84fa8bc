"""Bounds that hold whatever a server sends: each attempt end to end, each call by its deadline.

httpx's ``timeout`` bounds each *read*, so a server that drips one byte or one SSE event a
second keeps an attempt alive for as long as it keeps sending. These bounds are timers on
the event loop instead: ``bounded`` cuts one attempt after its ``timeout_s`` (raising
``AttemptTimedOut``, classified as a timeout and retried like one); ``Deadline.enforced``
cuts the whole call — admission waits (concurrency slot, rate slot, token budget), backoff
sleeps, every attempt and every fallback hop — ``defaults.deadline_s`` after it started,
ending it with one "timed out after 20 s" line. The deadline is measured on the client's
injected clock: with a fake clock a wait that moves the clock past it ends the call before
anything more is sent (``expire_if_over``), and the loop timer, which only real time moves,
never fires in such a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from ..errors import RetriesExhaustedError
from .records import CallRecord

T = TypeVar("T")
DEADLINE_SETTING = "defaults.deadline_s"
MIN_ATTEMPT_S = 0.001


class AttemptTimedOut(TimeoutError):
    """One attempt had no complete answer within its bound (a timeout for ``classify``)."""

    def __init__(self, seconds: float, setting: str):
        self.seconds, self.setting = seconds, setting
        super().__init__(f"no complete answer within {seconds:g} s ({setting})")


# Each task's innermost open _LoopTimer (Python 3.10).
_INNERMOST: weakref.WeakKeyDictionary[asyncio.Task[Any], _LoopTimer] = weakref.WeakKeyDictionary()


class _LoopTimer:
    """``asyncio.timeout`` for Python 3.10: cancel the task at the bound, then TimeoutError.
    Nested scopes that fire together (an attempt's timeout and the call's deadline): the
    cancellation goes on up to the outer one, as 3.11 does (3.10 merges two cancels of a
    task into one CancelledError, which the inner scope would otherwise take). Unlike 3.11,
    an outside cancel (Ctrl-C) in the same tick as a scope firing reads as that timeout."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._fired = False
        self._task: asyncio.Task[Any] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._outer: _LoopTimer | None = None

    def expired(self) -> bool:
        return self._fired

    def _outer_fired(self) -> bool:
        scope = self._outer
        while scope is not None and not scope._fired:
            scope = scope._outer
        return scope is not None

    def _fire(self) -> None:
        self._fired = True
        if self._task is not None:
            self._task.cancel()

    async def __aenter__(self) -> _LoopTimer:
        self._task = asyncio.current_task()
        if self._task is not None:
            self._outer = _INNERMOST.get(self._task)
            _INNERMOST[self._task] = self
        self._handle = asyncio.get_running_loop().call_later(self.seconds, self._fire)
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._task is not None and _INNERMOST.get(self._task) is self:  # exited in order
            if self._outer is None:
                _INNERMOST.pop(self._task, None)
            else:
                _INNERMOST[self._task] = self._outer
        if self._fired and exc_type is asyncio.CancelledError and not self._outer_fired():
            raise TimeoutError from exc


def time_limit(seconds: float) -> Any:
    """A scope cut after ``seconds`` on the event loop (``.expired()`` says it was)."""
    stdlib = getattr(asyncio, "timeout", None)  # Python 3.11+
    return stdlib(seconds) if stdlib is not None else _LoopTimer(seconds)


async def bounded(work: Awaitable[T], seconds: float, setting: str) -> T:
    """Await ``work`` for at most ``seconds`` end to end, else raise AttemptTimedOut."""
    scope = time_limit(seconds)
    try:
        async with scope:
            return await work
    except TimeoutError as exc:
        if scope.expired():
            raise AttemptTimedOut(seconds, setting) from exc
        raise


class Deadline:
    """When one call must be over: ``seconds`` after ``started`` on the injected clock."""

    def __init__(self, seconds: float, clock: Callable[[], float], started: float):
        self.seconds, self.clock = seconds, clock
        self.at = started + seconds
        self._scope: Any = None

    def remaining(self) -> float:
        return self.at - self.clock()

    @property
    def expired(self) -> bool:
        """The loop timer has cut the call (what runs now is being cancelled by it)."""
        return self._scope is not None and self._scope.expired()

    def attempt_bound(self, timeout_s: float, setting: str) -> tuple[float, str]:
        """The next attempt's bound and the setting it comes from: its timeout, or what is
        left of the deadline when that is less."""
        left = self.remaining()
        if timeout_s < left:
            return timeout_s, setting
        return max(left, MIN_ATTEMPT_S), DEADLINE_SETTING

    def exceeded(self, record: CallRecord) -> RetriesExhaustedError:
        """The one line a call cut by its deadline ends with."""
        exc = RetriesExhaustedError(
            f"{record.model}: timed out after {self.seconds:g} s ({DEADLINE_SETTING}), "
            f"{record.attempts} attempt(s)",
            attempts=record.attempts,
            last_reason="timeout",
        )
        exc.hint = "the service answers too slowly; retry later or use a lighter profile"
        return exc

    def expire_if_over(self, record: CallRecord) -> None:
        """Before sending: a wait that ran past the deadline (on the injected clock) ends it."""
        if self.remaining() <= 0:
            raise self.exceeded(record)

    @contextlib.asynccontextmanager
    async def enforced(self, record: CallRecord) -> AsyncIterator[None]:
        """Cut what runs inside at the deadline, on the event loop; raise ``exceeded``."""
        self._scope = time_limit(max(self.remaining(), 0.0))
        try:
            async with self._scope:
                yield
        except TimeoutError:
            if not self._scope.expired():
                raise
            raise self.exceeded(record) from None
