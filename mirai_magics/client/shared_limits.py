"""Quotas and breaker state in Redis, shared by every kernel and worker of one url and namespace.

The Redis twin of ``limits.py`` (request rates, rolling token budgets) and ``breaker.py``.
Every decision is one Lua script timed by Redis ``TIME``, so all processes share one clock
and no two can both take the last slot. Keys (all expire, so an abandoned namespace goes):

- ``{ns}:rps:{kind}``: the next free send time (µs, GCRA: sends spaced evenly, no burst);
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
from .shared_breaker import BREAKER_SCRIPTS, SharedCircuitBreaker

WINDOW_MS = 60_000  # the rolling minute of the token budgets
LEASE_MS = 600_000  # an unsettled estimate (its process died) is released after this + 1 min
REFRESH_S = 0.2  # how often a process reads the shared breaker state
# Sends are spaced by (1 s + GUARD_S) / rps: a send up to GUARD_S later than its slot (a busy
# loop or machine, the way to the wire) still cannot crowd a second past the limit. The cost:
# 150 ms of 1 s, so at most ~87% of rps is used (100 ms proved too little on a loaded 2-core
# machine: a worker descheduled after its check sent ~90 ms late).
GUARD_S = 0.15

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
_NOW_US = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""

# GCRA without burst. KEYS: the key of the next free send time (µs). ARGV: emission interval
# µs, max wait µs (< 0: none). Sends are booked at least one interval apart, so any second
# holds no more than 1 s / interval of them; returns {wait µs, booked 0/1, slot µs}.
_RATE = (
    _NOW_US
    + """
local t, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local slot = math.max(now, tonumber(redis.call('GET', KEYS[1]) or now))
if cap >= 0 and slot - now > cap then return {slot - now, 0, slot} end
redis.call('SET', KEYS[1], string.format('%d', slot + t),
           'PX', math.ceil((slot + t - now) / 1000) + 60000)
return {slot - now, 1, slot}
"""
)

# KEYS: as _RATE. ARGV: slot µs, interval µs. Gives the last booked slot back (a slot in the
# middle stays used: a gap, never an extra send).
_UNBOOK = """
if tonumber(redis.call('GET', KEYS[1]) or '-1') == tonumber(ARGV[1]) + tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
end
"""

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

SCRIPTS = {"rate": _RATE, "unbook": _UNBOOK, "reserve": _RESERVE, "settle": _SETTLE}
SCRIPTS |= {"used": _USED, **BREAKER_SCRIPTS}


def safe_url(url: str) -> str:
    """``url`` without user, password or query (which may carry a password)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def emission_us(rate: float, guard_s: float) -> int:
    """Microseconds between two sends enforcing ``rate``/s in every one-second window.

    floor(rate) sends per second (no window can hold half a send: 2.5/s is enforced as 2/s),
    or one per 1/rate s below 1; the guard stretches the interval so a send late by up to
    ``guard_s`` (event-loop lateness) still cannot crowd a window past the limit.
    """
    guard_us = round(guard_s * 1_000_000)
    if rate >= 1:
        return math.ceil((1_000_000 + guard_us) / math.floor(rate))
    return math.ceil(1_000_000 / rate) + guard_us


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
        guard_s: float = GUARD_S,
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
        """Book one send of ``kind`` in the shared schedule: (seconds to wait, slot id).

        Raises QuotaExceededError(kind='rate') and books nothing when the wait would
        exceed ``max_wait_s`` (None: no cap).
        """
        rate = getattr(self.limits.rps, kind)
        cap = -1 if max_wait_s is None else math.floor(max_wait_s * 1_000_000)
        args = [emission_us(rate, self.guard_s), cap]
        wait_us, booked, slot = await self._script("rate", [self._key("rps", kind)], args)
        wait = wait_us / 1_000_000
        if not booked:
            raise QuotaExceededError(
                f"{kind} rate limit of {rate:g} requests/s is saturated: the next slot "
                f"frees in {wait:.1f} s (over limits.max_wait_s = {max_wait_s:g})",
                retry_in_s=wait,
                kind="rate",
            )
        return wait, str(slot)

    async def refund(self, kind: str, member: str) -> None:
        """Give back a slot whose caller did not send (when it is still the last one booked)."""
        interval = emission_us(getattr(self.limits.rps, kind), self.guard_s)
        await self._script("unbook", [self._key("rps", kind)], [member, interval])

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
