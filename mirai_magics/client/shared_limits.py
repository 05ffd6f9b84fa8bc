"""Quotas and breaker state in Redis, shared by every kernel and worker of one url and namespace.

The Redis twin of ``limits.py`` (rate windows, rolling token budgets) and ``breaker.py``.
Every decision is one Lua script timed by Redis ``TIME``, so all processes share one clock
and no two can both take the last slot. Keys (all expire, so an abandoned namespace goes):

- ``{ns}:rps:{kind}``: ZSET of scheduled send times (ms);
- ``{ns}:tokens:global``, ``{ns}:tokens:user:{user}``: ZSETs of token entries;
- ``{ns}:breaker:{model}:failures`` (counter) and ``{ns}:breaker:{model}:open`` (PX = open time).

Any Redis failure surfaces as ``RedisUnavailableError`` naming the URL without credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..config import Breaker, Limits
from ..errors import QuotaExceededError, RedisUnavailableError
from .breaker import CircuitBreaker, State

WINDOW_MS = 60_000  # the rolling minute of the token budgets
LEASE_MS = 600_000  # an unsettled estimate (its process died) is released after this + 1 min
REFRESH_S = 0.2  # how often a process reads the shared breaker state

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: the window. ARGV: limit, window ms, max wait ms (< 0: none), member.
# t0 = max(now, newest); t = t0 if (t0-W, t0] holds fewer than limit, else limit-th newest + W.
# Every entry stays <= the newest, so any window ending after t holds no more than (t-W, t].
_RATE = (
    _NOW
    + """
local limit, w, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - w)
local slot = now
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #newest > 0 then slot = math.max(slot, tonumber(newest[2])) end
if redis.call('ZCOUNT', KEYS[1], '(' .. (slot - w), slot) >= limit then
  slot = tonumber(redis.call('ZRANGE', KEYS[1], -limit, -limit, 'WITHSCORES')[2]) + w
end
if cap >= 0 and slot - now > cap then return {slot - now, 0} end
redis.call('ZADD', KEYS[1], slot, ARGV[4])
redis.call('PEXPIRE', KEYS[1], slot - now + 3 * w)
return {slot - now, 1}
"""
)

# Token entries: "r:<id>:<n>" in flight (score = lease end, in the future), "s:<id>:<n>"
# settled (score = settle time). Used = every entry scored after now - 1 min.
_LOAD = """
local function load(key, w)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - w)
  local rows = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local used, settled = 0, {}
  for i = 1, #rows, 2 do
    local n = tonumber(string.match(rows[i], ':(%d+)$'))
    used = used + n
    if tonumber(rows[i + 1]) <= now then settled[#settled + 1] = {tonumber(rows[i + 1]), n} end
  end
  return used, settled
end
"""

# KEYS: user, global. ARGV: amount, user limit, global limit, window ms, lease ms, reservation.
# Returns {0} when held in both, else {budget index, used, ms until enough rolls out}.
_RESERVE = (
    _NOW
    + _LOAD
    + """
local amount, w, lease = tonumber(ARGV[1]), tonumber(ARGV[4]), tonumber(ARGV[5])
for i, key in ipairs(KEYS) do
  local used, settled = load(key, w)
  local excess = used + amount - tonumber(ARGV[i + 1])
  if excess > 0 then
    local wait = w
    for _, row in ipairs(settled) do
      excess = excess - row[2]
      if excess <= 0 then wait = math.max(0, row[1] + w - now) break end
    end
    return {i, used, wait}
  end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + lease, 'r:' .. ARGV[6])
  redis.call('PEXPIRE', key, lease + w)
end
return {0}
"""
)

# KEYS: user, global. ARGV: reservation "<id>:<n>", actual, window ms.
_SETTLE = (
    _NOW
    + """
local id = string.match(ARGV[1], '^(.*):%d+$')
for _, key in ipairs(KEYS) do
  if redis.call('ZREM', key, 'r:' .. ARGV[1]) == 1 and tonumber(ARGV[2]) > 0 then
    redis.call('ZADD', key, now, 's:' .. id .. ':' .. ARGV[2])
    if redis.call('PTTL', key) < tonumber(ARGV[3]) then redis.call('PEXPIRE', key, ARGV[3]) end
  end
end
"""
)

# KEYS: global, user. ARGV: window ms. Returns {global used, user used}.
_USED = (
    _NOW
    + _LOAD
    + """
local g = load(KEYS[1], tonumber(ARGV[1]))
local u = load(KEYS[2], tonumber(ARGV[1]))
return {g, u}
"""
)

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

SCRIPTS = {"rate": _RATE, "reserve": _RESERVE, "settle": _SETTLE, "used": _USED}
SCRIPTS |= {"fail": _FAIL, "open": _OPEN}


def safe_url(url: str) -> str:
    """``url`` without user, password or query (which may carry a password)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def rate_window(rate: float, guard_s: float) -> tuple[int, int]:
    """(sends, window ms) enforcing ``rate``/s: floor(rate) per second, one per 1/rate s below 1.

    No window can hold half a send, so 2.5/s is enforced as 2/s; the guard widens the window
    to absorb event-loop lateness between the scheduled time and the real send.
    """
    limit = max(1, math.floor(rate))
    return limit, math.ceil((max(1.0, 1.0 / rate) + guard_s) * 1000)


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis import exceptions

    return exceptions.ConnectionError, exceptions.TimeoutError, OSError, asyncio.TimeoutError


class SharedLimits:
    """Quotas in Redis, shared by every kernel and worker with the same url and namespace.

    Use it from one event loop at a time (the engine's); a new loop gets a new connection pool.
    """

    def __init__(
        self,
        url: str,
        namespace: str,
        limits: Limits,
        breaker: Breaker,
        *,
        connect_timeout_s: float = 2.0,
        guard_s: float = 0.05,
    ):
        self.url, self.safe_url = url, safe_url(url)
        self.namespace = namespace
        self.limits, self.breaker_settings = limits, breaker
        self.connect_timeout_s, self.guard_s = connect_timeout_s, guard_s
        self._prefix = f"{uuid.uuid4().hex[:12]}:"  # member ids unique across processes
        self._ids = itertools.count(1)
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scripts: dict[str, Any] = {}
        self._breakers: dict[str, SharedCircuitBreaker] = {}
        self._watcher: asyncio.Task | None = None
        self._pushes: set[asyncio.Task] = set()

    def _key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    def _next_id(self) -> str:
        return f"{self._prefix}{next(self._ids)}"

    # --- connection ------------------------------------------------------------------

    def _redis(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            try:
                import redis.asyncio as aioredis

                timeout = self.connect_timeout_s
                self._client = aioredis.Redis.from_url(
                    self.url, socket_connect_timeout=timeout, socket_timeout=timeout
                )
            except (ImportError, ValueError) as exc:
                raise RedisUnavailableError(self.safe_url, self._reason(exc)) from None
            self._loop = loop
            self._scripts = {n: self._client.register_script(s) for n, s in SCRIPTS.items()}
        return self._client

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, ImportError):
            return "the redis package is not installed: pip install redis"
        if "Timeout" in type(exc).__name__:
            return f"no answer within {self.connect_timeout_s:g} s"
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        password = urlsplit(self.url).password
        return text.replace(password, "***") if password else text

    @contextlib.contextmanager
    def _unavailable(self) -> Iterator[None]:
        """Turn any Redis connection failure into one RedisUnavailableError line."""
        try:
            yield
        except _redis_errors() as exc:
            raise RedisUnavailableError(self.safe_url, self._reason(exc)) from None

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        with self._unavailable():
            self._redis()
            return await self._scripts[name](keys=keys, args=args)

    async def ping(self) -> None:
        with self._unavailable():
            await self._redis().ping()

    async def close(self) -> None:
        """Stop the breaker watcher, flush pending breaker updates, close the connections."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.wait({self._watcher}, timeout=self.connect_timeout_s)
            self._watcher = None
        if self._pushes:
            await asyncio.wait(self._pushes, timeout=self.connect_timeout_s)
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None

    # --- rate ------------------------------------------------------------------------

    async def rate(self, kind: str, max_wait_s: float | None) -> tuple[float, str]:
        """Schedule one send of ``kind`` in the shared window: (seconds to wait, slot id).

        Raises QuotaExceededError(kind='rate') and schedules nothing when the wait would
        exceed ``max_wait_s`` (None: no cap).
        """
        rate = getattr(self.limits.rps, kind)
        limit, window_ms = rate_window(rate, self.guard_s)
        cap = -1 if max_wait_s is None else math.floor(max_wait_s * 1000)
        member = self._next_id()
        wait_ms, added = await self._script(
            "rate", [self._key("rps", kind)], [limit, window_ms, cap, member]
        )
        wait = wait_ms / 1000
        if not added:
            raise QuotaExceededError(
                f"{kind} rate limit of {rate:g} requests/s is saturated: the next slot "
                f"frees in {wait:.1f} s (over limits.max_wait_s = {max_wait_s:g})",
                retry_in_s=wait,
                kind="rate",
            )
        return wait, member

    async def refund(self, kind: str, member: str) -> None:
        """Remove a slot whose caller was cancelled before sending."""
        with self._unavailable():
            await self._redis().zrem(self._key("rps", kind), member)

    # --- token budgets ---------------------------------------------------------------

    def _budget_keys(self, user: str) -> list[str]:
        return [self._key("tokens", "user", user), self._key("tokens", "global")]

    def _budgets(self, user: str) -> list[tuple[str, int, str, str]]:
        """(label, limit, kind, setting) of the user's budget, then the global one."""
        tokens = self.limits.tokens
        return [
            (f"per-user ({user})", tokens.per_user_minute, "tokens_user", "per_user_minute"),
            ("global", tokens.per_minute, "tokens_global", "per_minute"),
        ]

    async def reserve(self, user: str, amount: int) -> str:
        """Hold ``amount`` tokens in the user's and the global budget at once; a reservation id.

        Raises QuotaExceededError (retry_in_s: when enough settled usage rolls out).
        """
        budgets = self._budgets(user)
        for label, limit, kind, setting in budgets:
            if amount > limit:
                exc = QuotaExceededError(
                    f"this call needs ~{amount:,} tokens, more than the whole {label} budget "
                    f"of {limit:,} tokens/min",
                    kind=kind,
                )
                exc.hint = (
                    f"shorten the prompt, lower --max-tokens or raise limits.tokens.{setting}"
                )
                raise exc
        reservation = f"{self._next_id()}:{amount}"
        args = [amount, budgets[0][1], budgets[1][1], WINDOW_MS, LEASE_MS, reservation]
        refused = await self._script("reserve", self._budget_keys(user), args)
        if refused[0]:
            label, limit, kind, _ = budgets[refused[0] - 1]
            used, wait = refused[1], refused[2] / 1000
            raise QuotaExceededError(
                f"{label} token budget of {limit:,}/min is used up ({used:,} used, "
                f"this call needs ~{amount:,}); it frees up in {wait:.0f} s",
                retry_in_s=wait,
                kind=kind,
            )
        return reservation

    async def settle(self, reservation: str, user: str, actual: int) -> None:
        """Replace the estimate by what the API reported (0 releases it); idempotent."""
        args = [reservation, max(0, actual), WINDOW_MS]
        await self._script("settle", self._budget_keys(user), args)

    async def used(self, user: str) -> tuple[int, int]:
        """(global, user) tokens of the current minute, in flight included."""
        keys = [self._key("tokens", "global"), self._key("tokens", "user", user)]
        used_global, used_user = await self._script("used", keys, [WINDOW_MS])
        return used_global, used_user

    # --- breakers --------------------------------------------------------------------

    def breaker(
        self, model: str, clock: Callable[[], float] = time.monotonic
    ) -> SharedCircuitBreaker:
        """The shared breaker of ``model`` (one per model and instance)."""
        if model not in self._breakers:
            self._breakers[model] = SharedCircuitBreaker(model, self, clock)
        return self._breakers[model]

    def _push(self, update: Callable[[], Awaitable[Any]]) -> bool:
        """Run ``update`` as a fire-and-forget task on the running loop; False: no loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        task = loop.create_task(update())
        self._pushes.add(task)
        task.add_done_callback(self._pushed)
        return True

    def _pushed(self, task: asyncio.Task) -> None:
        self._pushes.discard(task)
        if not task.cancelled():
            task.exception()  # Redis down: the breaker works per process until it answers

    def _watch(self) -> None:
        """Start the background refresh of breaker state, once, on the running loop."""
        if self._watcher is not None and not self._watcher.done():
            return
        with contextlib.suppress(RuntimeError):  # no loop running: the cache stays as it is
            self._watcher = asyncio.get_running_loop().create_task(self._watch_loop())

    async def _watch_loop(self) -> None:
        while True:
            with contextlib.suppress(RedisUnavailableError):
                await self._refresh()
            await asyncio.sleep(REFRESH_S)

    async def _refresh(self) -> None:
        """Read every breaker's open key once."""
        breakers = list(self._breakers.values())
        with self._unavailable():
            async with self._redis().pipeline(transaction=False) as pipe:
                for breaker in breakers:
                    pipe.pttl(breaker.keys[1])
                ttls = await pipe.execute()
        for breaker, ttl in zip(breakers, ttls, strict=True):
            breaker.seen(ttl)


class SharedCircuitBreaker(CircuitBreaker):
    """A CircuitBreaker whose failures and open state are shared through Redis.

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

    def __init__(self, model: str, shared: SharedLimits, clock: Callable[[], float]):
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
