"""The call policy: quotas and degradation rules behind ResilientClient's ``policy`` seam.

Per chat call the client asks ``route`` (a rule such as rate_limit_429 may divert the call
down the fallback chain), then per profile tried ``adjust_params`` (each engaged rule's
effect, e.g. latency_high cuts max_tokens) and ``admit``: the
per-request cap, a concurrency slot, a rate token and the token budgets (global and per
user), in that order; the reservation is settled with the API's ``usage`` afterwards.
Money is the ``spend`` part (``client/spend.py``): per model, per session and per day, held
before sending against ``limits.budget_usd`` and settled with the call's real cost.
The per-user budget belongs to the request's ``user`` parameter when one is given (a
service passing its end users' ids), else to the session user.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..config import Config, redis_url
from ..errors import QuotaExceededError, RedisUnavailableError
from ..pricing import Prices
from ..tokens import context_window
from .admission import Admission
from .breaker import CircuitBreaker
from .degrade import Rule, build_rules
from .limits import ConcurrencyCaps, Reservation, TokenBucket, TokenBudgets
from .observers import Observer
from .records import CallRecord, Degradation
from .spend import Spend

if TYPE_CHECKING:
    from .shared_limits import SharedLimits

REDIS_DOWN = "redis_down"  # the degradation of calls admitted by local limits, Redis down
REDIS_RETRY_S = 5.0  # with on_redis_down: local, how long before Redis is asked again


class Policy:
    """Quotas + degradation for one client; all state lives on the engine loop's thread."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        spend: Spend | None = None,
    ):
        limits = config.limits
        self.spend = spend or Spend()  # the session's spend: a rebuilt Policy is given it
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
        self.shared = _shared_limits(config) if limits.backend == "redis" else None
        self.redis_retry_at = float("-inf")
        self.redis_problem = ""  # why Redis was last unreachable (status)

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        """A reload that keeps the Policy hands it the new config: prices and caps follow."""
        self._config = config
        self.spend.configure(config)

    @property
    def prices(self) -> Prices:
        """What calls cost under this config (badges, the call log and budgets agree)."""
        return self.spend.prices

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
        user = self.budget_user(record)
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
            return self.budgets.reserve(self.budget_user(record), record.tokens_estimated)
        except QuotaExceededError as exc:
            self.buckets[kind].refund()  # nothing was sent: the rate token is not used up
            if background and exc.retry_in_s is not None:
                return None
            raise self._rejected(record, exc) from None

    def _rejected(self, record: CallRecord, exc: QuotaExceededError) -> QuotaExceededError:
        self.rejections[exc.kind] += 1
        record.quota = exc.kind
        return exc

    @staticmethod
    def budget_user(record: CallRecord) -> str:
        return record.params.get("user") or record.user or "unknown"

    # --- shared limits (limits.backend: redis) -----------------------------------------

    def shared_for(self, record: CallRecord) -> SharedLimits | None:
        """The Redis limits to admit ``record`` by; None: local (the backend, or Redis
        down with on_redis_down: local, which the record's degradations then say)."""
        if self.shared is None:
            return None
        if self.clock() >= self.redis_retry_at:
            return self.shared
        record.degrade(Degradation(REDIS_DOWN, "local limits"))
        return None

    def redis_down(self, exc: RedisUnavailableError, record: CallRecord) -> None:
        """Redis failed mid-admission: raise, or (on_redis_down: local) go local for a while."""
        self.redis_problem = str(exc)
        if self.config.limits.on_redis_down == "error":
            raise exc
        self.redis_retry_at = self.clock() + REDIS_RETRY_S
        record.degrade(Degradation(REDIS_DOWN, "local limits"))

    def breaker(self, model: str, clock: Callable[[], float]) -> CircuitBreaker:
        """The breaker of ``model`` (a breaker key: ``gpt-4o``, or ``local:llama3.2`` off the
        default endpoint, so Redis keys ``breaker:local:llama3.2:*``): shared through Redis
        in redis mode, else this process's."""
        if self.shared is not None:
            return self.shared.breaker(model, clock)
        return CircuitBreaker(model, self.config.circuit_breaker, clock)

    async def aclose(self) -> None:
        """Close the Redis connections (on the loop that used them)."""
        if self.shared is not None:
            await self.shared.close()

    async def shared_rows(self, user: str) -> list[tuple[str, str]]:
        """Status rows read from Redis: the shared minute's tokens, or why Redis is down."""
        shared = self.shared
        if shared is None:
            return []
        where = f"redis {shared.safe_url} · namespace {shared.namespace}"
        try:
            used_global, used_user = await shared.used(user)
        except RedisUnavailableError as exc:
            return [("limits", f"{where} · unreachable: {exc}")]
        tokens = self.config.limits.tokens
        return [
            ("limits", where),
            ("tokens this minute (shared, global)", f"{used_global:,} / {tokens.per_minute:,}"),
            (f"tokens this minute (shared, {user})", f"{used_user:,} / {tokens.per_user_minute:,}"),
        ]

    # --- status -----------------------------------------------------------------------

    def status_rows(self, user: str | None = None) -> list[tuple[str, str]]:
        """Rows for `%mirai status`: budgets, rates, slots, degradations, rejections (the
        shared budgets of redis mode come from ``shared_rows``)."""
        rows = []
        if self.shared is None:
            g = self.budgets.global_budget
            rows.append(("tokens this minute (global)", f"{g.used():,} / {g.limit:,}"))
            for name, budget in sorted(self.budgets.users.items()):
                if user is None or name == user:
                    used = f"{budget.used():,} / {budget.limit:,}"
                    rows.append((f"tokens this minute ({name})", used))
        caps, busy = self.slots.caps, self.slots.in_flight
        rows.append(("in flight", " · ".join(f"{k} {busy[k]}/{caps[k]}" for k in caps)))
        rows.append(("degradations active", ", ".join(self.active()) or "none"))
        rejected = " · ".join(f"{k} {n}" for k, n in sorted(self.rejections.items()))
        rows.append(("quota rejections", rejected or "0"))
        return rows


def quota_settings(config: Config | None) -> tuple[Any, ...]:
    """What a Policy is built from: a reload that changes none keeps the Policy's state (a
    new ``limits.budget_usd`` alone keeps it too: the session's spend is not forgotten)."""
    if config is None:
        return (None,)
    shared = (redis_url(config), config.redis) if config.limits.backend == "redis" else None
    limits = config.limits.model_copy(update={"budget_usd": None})
    return limits, config.degradation, config.circuit_breaker, shared


def _shared_limits(config: Config) -> SharedLimits:
    from .shared_limits import SharedLimits

    return SharedLimits(
        redis_url(config),
        config.redis.namespace,
        config.limits,
        config.circuit_breaker,
        connect_timeout_s=config.redis.connect_timeout_s,
    )
