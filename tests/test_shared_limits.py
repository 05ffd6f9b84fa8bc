"""Quotas and breakers shared through a real redis-server: several processes, one limit."""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path

import pytest
import redis
from redisutil import redis_server, shared_redis_server  # noqa: F401  (fixtures)

from mirai_magics.client.breaker import State
from mirai_magics.client.shared_limits import SharedLimits, emission_us, safe_url
from mirai_magics.config import Breaker, Limits
from mirai_magics.errors import CircuitOpenError, QuotaExceededError, RedisUnavailableError

TESTS = Path(__file__).resolve().parent
RPS = 10


def limits(chat: float = RPS, per_minute: int = 1000, per_user: int = 600) -> Limits:
    return Limits.model_validate(
        {"rps": {"chat": chat}, "tokens": {"per_minute": per_minute, "per_user_minute": per_user}}
    )


def shared(url: str, namespace: str, **limit_args) -> SharedLimits:
    settings = Breaker(failure_threshold=3, timeout_s=5, half_open_interval_s=2)
    return SharedLimits(url, namespace, limits(**limit_args), settings, connect_timeout_s=1)


def run(coro_fn, *args):
    """Run one async test body on a fresh loop."""
    return asyncio.run(coro_fn(*args))


@pytest.fixture
def ns() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def inspect(shared_redis_server):  # noqa: F811
    client = redis.Redis.from_url(shared_redis_server.url, decode_responses=True)
    yield client
    client.close()


# --- rate: one sliding window for every process ------------------------------------------


async def hammer(url: str, namespace: str, start_at: float, stop_at: float) -> list[float]:
    """Eight tasks send as fast as the shared window allows; the wall-clock send times."""
    limiter = shared(url, namespace)
    sent: list[float] = []

    async def sender() -> None:
        while True:
            wait, member = await limiter.rate("chat", None)
            if time.time() + wait > stop_at:
                await limiter.refund("chat", member)
                return
            await asyncio.sleep(wait)
            sent.append(time.time())

    await asyncio.sleep(max(0.0, start_at - time.time()))
    await asyncio.gather(*(sender() for _ in range(8)))
    await limiter.close()
    return sent


HAMMER = (  # says "ready" once imported, then takes "start_at stop_at" from stdin
    "import asyncio, json, sys; from test_shared_limits import hammer; print('ready', flush=True); "
    "start_at, stop_at = map(float, sys.stdin.readline().split()); "
    "print(json.dumps(asyncio.run(hammer(sys.argv[1], sys.argv[2], start_at, stop_at))))"
)
READY_TIMEOUT_S = 60.0  # importing the package on a loaded machine


def wait_ready(children: list[subprocess.Popen]) -> None:
    """Each child has printed "ready" (fail after READY_TIMEOUT_S in all)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    for child in children:
        readable, _, _ = select.select(
            [child.stdout], [], [], max(0.0, deadline - time.monotonic())
        )
        line = child.stdout.readline() if readable else ""
        assert line == "ready\n", f"a child was not ready within {READY_TIMEOUT_S:g} s: {line!r}"


def busiest_second(times: list[float]) -> int:
    """The most sends in any sliding one-second window [t, t + 1)."""
    times = sorted(times)
    return max(sum(1 for u in times[i:] if u < t + 1.0) for i, t in enumerate(times))


def test_two_processes_and_this_one_never_exceed_the_rate_in_any_second(shared_redis_server, ns):  # noqa: F811
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    args = [sys.executable, "-c", HAMMER, shared_redis_server.url, ns]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    children = [subprocess.Popen(args, env=env, **pipes) for _ in "ab"]
    try:
        wait_ready(children)
        start_at = time.time() + 0.5  # all three start together, each already imported
        stop_at = start_at + 3.0
        for child in children:
            child.stdin.write(f"{start_at!r} {stop_at!r}\n")
            child.stdin.flush()
        mine = run(hammer, shared_redis_server.url, ns, start_at, stop_at)
        theirs = [json.loads(child.communicate(timeout=30)[0]) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=5)
    assert all(child.returncode == 0 for child in children)
    assert mine and all(theirs), "every process sent something"
    every = mine + [t for sent in theirs for t in sent]
    assert busiest_second(every) <= RPS
    per_second = [sum(1 for t in every if start_at + s <= t < start_at + s + 1) for s in range(3)]
    assert max(per_second) <= RPS
    assert len(every) >= 0.8 * RPS * (stop_at - start_at)


def test_schedule_spaces_sends_evenly_with_no_burst(shared_redis_server, ns):  # noqa: F811
    async def body():
        limiter = shared(shared_redis_server.url, ns, chat=3)
        waits = [(await limiter.rate("chat", None))[0] for _ in range(7)]
        await limiter.close()
        return waits

    waits = run(body)
    assert waits[0] == 0  # then one every (1 s + 150 ms guard) / 3, booked ones first
    assert waits[1:] == [pytest.approx(1.15 / 3 * i, abs=0.01) for i in range(1, 7)]


def test_rate_refused_over_max_wait_books_nothing(shared_redis_server, ns, inspect):  # noqa: F811
    async def body():
        limiter = shared(shared_redis_server.url, ns, chat=2)
        await limiter.rate("chat", 0)
        await limiter.rate("chat", 0.6)
        booked = inspect.get(f"{ns}:rps:chat")
        with pytest.raises(QuotaExceededError) as info:
            await limiter.rate("chat", 0.5)
        unchanged = inspect.get(f"{ns}:rps:chat") == booked
        wait, _ = await limiter.rate("chat", None)
        await limiter.close()
        return info.value, unchanged, wait

    refused, unchanged, wait = run(body)
    assert refused.kind == "rate" and refused.retry_in_s == pytest.approx(1.15, abs=0.01)
    assert "limits.max_wait_s = 0.5" in str(refused)
    assert unchanged
    assert wait == pytest.approx(1.15, abs=0.01)  # not 1.725: the refused call took no slot


def test_refund_gives_the_last_slot_back(shared_redis_server, ns):  # noqa: F811
    async def body():
        limiter = shared(shared_redis_server.url, ns, chat=2)
        await limiter.rate("chat", None)
        first, member = await limiter.rate("chat", None)
        await limiter.refund("chat", member)
        again, _ = await limiter.rate("chat", None)
        await limiter.close()
        return first, again

    first, again = run(body)
    assert again == pytest.approx(first, abs=0.01) and first == pytest.approx(0.575, abs=0.01)


def test_emission_interval_for_fractional_rates():
    assert emission_us(10, 0.05) == 105_000
    assert emission_us(2.5, 0.05) == 525_000  # 2 per second: never more than 2.5 in any second
    assert emission_us(0.5, 0.05) == 2_050_000  # one send per two seconds


# --- token budgets ---------------------------------------------------------------------


def test_budgets_are_shared_per_namespace_per_user_and_global(shared_redis_server, ns):  # noqa: F811
    url = shared_redis_server.url

    async def body():
        a, b, other = shared(url, ns), shared(url, ns), shared(url, ns + "x")
        first = await a.reserve("ann", 500)
        with pytest.raises(QuotaExceededError) as user_full:
            await b.reserve("ann", 200)  # 700 > 600 for ann, though only a held it
        await b.reserve("bob", 400)
        with pytest.raises(QuotaExceededError) as global_full:
            await b.reserve("cat", 200)  # 1100 > 1000 globally
        assert await other.used("ann") == (0, 0)
        await other.reserve("ann", 600)  # another namespace: its own budgets
        await a.settle(first, "ann", 100)
        await b.settle(first, "ann", 100)  # idempotent: counted once
        after_settle = await b.used("ann")
        await b.reserve("ann", 450)
        with pytest.raises(QuotaExceededError) as rolls_out:
            await a.reserve("ann", 100)
        for limiter in (a, b, other):
            await limiter.close()
        return user_full.value, global_full.value, after_settle, rolls_out.value

    user_full, global_full, after_settle, rolls_out = run(body)
    assert user_full.kind == "tokens_user" and "per-user (ann)" in str(user_full)
    assert user_full.retry_in_s == pytest.approx(60, abs=1)  # only calls in flight hold it
    assert global_full.kind == "tokens_global" and "900 used" in str(global_full)
    assert after_settle == (500, 100)  # bob's 400 in flight + ann's settled 100
    assert 58 < rolls_out.retry_in_s <= 60  # when ann's settled 100 leaves the minute


def test_settle_zero_releases_and_whole_budget_names_the_setting(shared_redis_server, ns):  # noqa: F811
    url = shared_redis_server.url

    async def body():
        limiter = shared(url, ns)
        held = await limiter.reserve("ann", 600)
        await limiter.settle(held, "ann", 0)
        released = await limiter.used("ann")
        with pytest.raises(QuotaExceededError) as too_big:
            await limiter.reserve("ann", 601)
        small_global = shared(url, ns, per_minute=500, per_user=2000)
        with pytest.raises(QuotaExceededError) as too_big_global:
            await small_global.reserve("ann", 501)
        await limiter.close()
        await small_global.close()
        return released, too_big.value, too_big_global.value

    released, too_big, too_big_global = run(body)
    assert released == (0, 0)
    assert too_big.kind == "tokens_user" and too_big.retry_in_s is None
    assert "limits.tokens.per_user_minute" in str(too_big)
    assert too_big_global.kind == "tokens_global" and "limits.tokens.per_minute" in str(
        too_big_global
    )


# --- breaker ---------------------------------------------------------------------------


async def until(predicate, timeout_s: float = 2.0) -> float:
    """Poll ``predicate`` every 10 ms; the time it became true (fails after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)
    return time.monotonic()


def refuses(breaker) -> bool:
    try:
        breaker.check()
    except CircuitOpenError:
        return True
    return False


def test_failures_of_two_processes_add_up_and_both_refuse(shared_redis_server, ns, inspect):  # noqa: F811
    url, failures = shared_redis_server.url, f"{ns}:breaker:m:failures"

    async def body():
        a, b = shared(url, ns).breaker("m"), shared(url, ns).breaker("m")
        for breaker, count in ((a, 1), (b, 2)):
            breaker.failure(probe=False)
            await until(lambda count=count: inspect.get(failures) == str(count))
        assert not refuses(a) and not refuses(b)  # 2 < 3 failures
        a.failure(probe=False)  # the third, from a process that saw only two of its own
        opened = await until(lambda: inspect.pttl(f"{ns}:breaker:m:open") > 0)
        refused = await until(lambda: refuses(b))
        await until(lambda: a.current_state() is State.OPEN)
        ttls = inspect.pttl(f"{ns}:breaker:m:open")
        with pytest.raises(CircuitOpenError) as info:
            b.acquire()
        await a.shared.close()
        await b.shared.close()
        return refused - opened, ttls, info.value

    delay, ttl, refusal = run(body)
    assert delay < 0.5
    assert 0 < ttl <= 5000
    assert 3 < refusal.remaining_s <= 5


def test_a_success_anywhere_resets_the_shared_count(shared_redis_server, ns, inspect):  # noqa: F811
    url, failures = shared_redis_server.url, f"{ns}:breaker:m:failures"

    async def body():
        a, b = shared(url, ns).breaker("m"), shared(url, ns).breaker("m")
        a.failure(probe=False)
        a.failure(probe=False)
        await until(lambda: inspect.get(failures) == "2")
        assert inspect.pttl(failures) > 0
        b.success(probe=False)
        await until(lambda: inspect.get(failures) is None)
        a.failure(probe=False)
        await until(lambda: inspect.get(failures) == "1")
        await asyncio.sleep(0.3)  # a watcher refresh or more: still closed everywhere
        states = a.current_state(), b.current_state()
        await a.shared.close()
        await b.shared.close()
        return states

    assert run(body) == (State.CLOSED, State.CLOSED)
    assert inspect.pttl(f"{ns}:breaker:m:open") == -2  # never opened


# --- Redis down and key expiry ---------------------------------------------------------


def test_redis_down_is_one_line_without_the_password(redis_server, ns):  # noqa: F811
    plain = redis_server.url
    secret = plain.replace("redis://", "redis://user:secretpw@")

    async def body():
        limiter = shared(plain, ns)
        await limiter.ping()
        assert (await limiter.rate("chat", None))[0] == 0
        redis_server.stop()
        errors = []
        for attempt in (limiter.ping, lambda: limiter.rate("chat", None)):
            with pytest.raises(RedisUnavailableError) as info:
                await attempt()
            errors.append(info.value)
        with pytest.raises(RedisUnavailableError) as info:
            await shared(secret, ns).reserve("ann", 10)
        errors.append(info.value)
        redis_server.start()
        await limiter.ping()  # reconnects once Redis is back
        await limiter.close()
        return errors

    errors = run(body)
    for error in errors:
        text = str(error)
        assert "\n" not in text and "secretpw" not in text and "user@" not in text
        assert f"Redis at {plain} is unreachable" in text
        assert error.__cause__ is None and error.__suppress_context__
        shown = "".join(traceback.format_exception(error))
        assert "During handling" not in shown and f"{os.sep}redis{os.sep}" not in shown


def test_breaker_counts_locally_while_redis_is_down(redis_server, ns):  # noqa: F811
    async def body():
        breaker = shared(redis_server.url, ns).breaker("m")
        redis_server.stop()
        for _ in range(2):
            breaker.failure(probe=False)
        await asyncio.sleep(0.3)
        before = breaker.current_state()
        breaker.failure(probe=False)
        await until(lambda: breaker.current_state() is State.OPEN)
        await breaker.shared.close()
        return before

    assert run(body) is State.CLOSED  # the threshold (3) still holds


def test_safe_url_strips_credentials():
    assert safe_url("redis://u:pw@h:1/0?password=pw") == "redis://h:1/0"
    assert safe_url("rediss://:pw@[::1]:6380/2") == "rediss://[::1]:6380/2"
    assert safe_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_every_key_expires(shared_redis_server, ns, inspect):  # noqa: F811
    async def body():
        limiter = shared(shared_redis_server.url, ns)
        await limiter.rate("chat", None)
        await limiter.rate("embeddings", None)
        await limiter.settle(await limiter.reserve("ann", 10), "ann", 10)
        await limiter.reserve("bob", 10)
        breaker = limiter.breaker("m")
        for _ in range(3):
            breaker.failure(probe=False)
        await until(lambda: inspect.pttl(f"{ns}:breaker:m:open") > 0)
        limiter.breaker("n").failure(probe=False)
        await until(lambda: inspect.exists(f"{ns}:breaker:n:failures"))
        await limiter.close()

    run(body)
    keys = sorted(inspect.scan_iter(f"{ns}:*"))
    assert keys == [
        f"{ns}:breaker:m:open",
        f"{ns}:breaker:n:failures",
        f"{ns}:rps:chat",
        f"{ns}:rps:embeddings",
        f"{ns}:tokens:global",
        f"{ns}:tokens:user:ann",
        f"{ns}:tokens:user:bob",
    ]
    assert all(inspect.pttl(key) > 0 for key in keys)
