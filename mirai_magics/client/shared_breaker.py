"""The circuit breaker whose failure count and open state live in Redis (``SharedLimits``).

Keys: ``{ns}:breaker:{model}:failures`` (a counter) and ``{ns}:breaker:{model}:open``
(PX = the open time). The connection, the fire-and-forget pushes and the 0.2 s watcher that
reads every open key belong to ``SharedLimits``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..errors import RedisUnavailableError
from .breaker import CircuitBreaker, State

# KEYS: failures, open. ARGV: threshold, open ms, failures ttl ms. Returns ms open (0: closed).
_FAIL = """
local open = redis.call('PTTL', KEYS[2])
if open > 0 then return open end
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if n < tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
redis.call('DEL', KEYS[1])
return tonumber(ARGV[2])
"""

# KEYS: failures, open. ARGV: open ms. Opens for at least that long.
_OPEN = """
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
end
redis.call('DEL', KEYS[1])
"""

BREAKER_SCRIPTS = {"fail": _FAIL, "open": _OPEN}


class SharedCircuitBreaker(CircuitBreaker):
    """A CircuitBreaker whose failures and open state are shared through Redis.

    ``shared`` is the ``SharedLimits`` that made it (its connection, pushes and watcher).

    The sync methods never wait for Redis: each counted failure, opening and success is
    pushed as a fire-and-forget task. Consecutive failures of every process add up in one
    counter (a success anywhere resets it); the process whose failure reaches the threshold
    opens when Redis replies (one round trip later), the others when their watcher next reads
    the open key (every 0.2 s, from their first breaker call on): at most ~0.2 s plus a round
    trip after it opened. Half-open probing stays per process: each admits its own probe
    once the shared open time has run out, and a failed probe reopens it everywhere. A count
    untouched for ``timeout_s`` is forgotten. A failure Redis cannot take is counted in this
    process, so with Redis down it behaves like a local breaker.
    """

    def __init__(self, model: str, shared: Any, clock: Callable[[], float]):
        super().__init__(model, shared.breaker_settings, clock)
        self.shared = shared
        self.keys = [
            shared._key("breaker", model, "failures"),
            shared._key("breaker", model, "open"),
        ]
        self.remote_until = 0.0  # local clock time the shared open key runs out

    def seen(self, ttl_ms: int) -> None:
        """Record the remaining time of the shared open key (<= 0: absent)."""
        self.remote_until = self.clock() + ttl_ms / 1000 if ttl_ms > 0 else 0.0

    def _sync(self) -> None:
        """Adopt an open state set elsewhere (unless a probe of ours is in flight)."""
        self.shared._watch()
        with self._lock:
            until = self.remote_until
            if until <= self.clock() or self.probe_in_flight:
                return
            if self.state is State.CLOSED or until > self.reopen_at:
                self.state, self.reopen_at = State.OPEN, until
                self.failures = self.probe_successes = 0

    def check(self) -> None:
        self._sync()
        super().check()

    def acquire(self) -> bool:
        self._sync()
        return super().acquire()

    def remaining_s(self) -> float:
        self._sync()
        return super().remaining_s()

    def current_state(self) -> State:
        self._sync()
        return super().current_state()

    def success(self, probe: bool) -> None:
        super().success(probe)
        self.shared._push(self._reset)

    def failure(self, probe: bool) -> None:
        """Count a failure in Redis (its reply may open the breaker); a probe's reopens it."""
        self._sync()
        if probe:
            super().failure(probe)
            return
        with self._lock:
            closed = self.state is State.CLOSED
        # not closed: a straggler that started before the breaker opened
        if closed and not self.shared._push(self._count):
            super().failure(False)  # no loop to reach Redis from: counted here only

    def _open(self, seconds: float) -> None:
        super()._open(seconds)
        self.shared._push(lambda: self._publish_open(seconds))

    async def _reset(self) -> None:
        with self.shared._unavailable():
            await self.shared._redis().delete(self.keys[0])

    async def _count(self) -> None:
        settings = self.settings
        ms = [math.ceil(settings.timeout_s * 1000)] * 2
        try:
            open_ms = await self.shared._script(
                "fail", self.keys, [settings.failure_threshold, *ms]
            )
        except RedisUnavailableError:
            super().failure(False)  # counted in this process only
            raise
        if open_ms > 0:
            self.seen(open_ms)
            self._sync()

    async def _publish_open(self, seconds: float) -> None:
        await self.shared._script("open", self.keys, [math.ceil(seconds * 1000)])
